#include "cli/cli.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "cli/exit_codes.h"

namespace vmseal::cli {

int ExitCodeFor(const Status& status) {
  switch (status.code()) {
    case StatusCode::kOk: return kExitOk;
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kUnimplemented: return kExitInvalidInput;
    case StatusCode::kDataLoss: return kExitAuthFailed;
    case StatusCode::kNotFound:
    case StatusCode::kResourceExhausted:
    case StatusCode::kAlreadyExists: return kExitIo;
    case StatusCode::kPermissionDenied:
    case StatusCode::kUnauthenticated: return kExitDenied;
    case StatusCode::kUnavailable:
    case StatusCode::kDeadlineExceeded: return kExitUnavailable;
    default: return kExitError;
  }
}

const char* ExitCodesHelp() {
  return "Exit codes:\n"
         "  0  success\n"
         "  1  internal error\n"
         "  2  usage error (bad flags or arguments)\n"
         "  3  invalid input (malformed, unsupported or out-of-range data)\n"
         "  4  authentication failed (wrong key, wrong context, tampered data)\n"
         "  5  I/O error (missing or unreadable file, output exists, disk full)\n"
         "  6  denied (credentials, permissions or release policy)\n"
         "  7  service unavailable\n";
}

int Run(int argc, char** argv) {
  CLI::App app{"vmseal: seal VM images for a cloud that never sees their keys"};
  app.require_subcommand(1);
  app.footer(ExitCodesHelp());
  app.set_version_flag("--version", "vmseal 0.1.0");

  Status result;
  bool ran = false;
  CommandSink sink = [&](Status s) {
    result = std::move(s);
    ran = true;
  };
  AddKeyCommands(app, sink);
  AddStreamCommands(app, sink);
  AddPackageCommands(app, sink);
  AddKmsCommands(app, sink);
  AddHostCommands(app, sink);
  AddCspCommands(app, sink);
  AddCustomerCommands(app, sink);
  AddDemoCommands(app, sink);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitUsage;
  }
  if (!ran) return kExitOk;
  if (!result.ok()) {
    std::fprintf(stderr, "vmseal: error: %s\n", result.message().c_str());
    return ExitCodeFor(result);
  }
  return kExitOk;
}

}  // namespace vmseal::cli
