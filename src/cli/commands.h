// Each component's subcommands register themselves on the root app here.
// One function per component, each defined in its own *_commands.cc.
#ifndef VMSEAL_CLI_COMMANDS_H_
#define VMSEAL_CLI_COMMANDS_H_

#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <string>

#include "base/status.h"

namespace vmseal::cli {

// What a subcommand's callback reports back to Run: the status decides the
// exit code; Run prints a non-OK status as a one-line "vmseal: error: ...".
struct CommandResult {
  Status status;
};

// Subcommands set this from their CLI11 callback.
using CommandSink = std::function<void(Status)>;

void AddKeyCommands(CLI::App& app, const CommandSink& sink);       // keygen
void AddStreamCommands(CLI::App& app, const CommandSink& sink);    // stream seal|open
void AddPackageCommands(CLI::App& app, const CommandSink& sink);   // seal|unseal|inspect
void AddKmsCommands(CLI::App& app, const CommandSink& sink);       // kms ...
void AddHostCommands(CLI::App& app, const CommandSink& sink);      // host ...
void AddCspCommands(CLI::App& app, const CommandSink& sink);       // csp ...
void AddCustomerCommands(CLI::App& app, const CommandSink& sink);  // customer ...
void AddDemoCommands(CLI::App& app, const CommandSink& sink);      // demo, sample-image
void AddKekRotationCommands(CLI::App* kms, const CommandSink& sink);  // kms rotate-kek, kek-new

// The customer key version a KMS customer certificate (PEM) names: N for a
// subject OU "key-version:N" (kms/key_versions.h), 1 for none.
StatusOr<uint64_t> KeyVersionOfCertificate(const std::string& pem);

}  // namespace vmseal::cli

#endif  // VMSEAL_CLI_COMMANDS_H_
