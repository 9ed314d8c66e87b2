// The vmseal command line: one binary, one subcommand group per component.
#ifndef VMSEAL_CLI_CLI_H_
#define VMSEAL_CLI_CLI_H_

namespace vmseal::cli {

// Parses argv, runs the subcommand and returns the process exit code
// (see ExitCodeFor in cli/exit_codes.h).
int Run(int argc, char** argv);

}  // namespace vmseal::cli

#endif  // VMSEAL_CLI_CLI_H_
