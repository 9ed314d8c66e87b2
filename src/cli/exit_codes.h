// Process exit codes, one table for every subcommand (documented in --help).
#ifndef VMSEAL_CLI_EXIT_CODES_H_
#define VMSEAL_CLI_EXIT_CODES_H_

#include "base/status.h"

namespace vmseal::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;          // anything not below
inline constexpr int kExitUsage = 2;          // bad flags or arguments
inline constexpr int kExitInvalidInput = 3;   // malformed or unsupported input
inline constexpr int kExitAuthFailed = 4;     // decryption/verification failed
inline constexpr int kExitIo = 5;             // file missing, unreadable, disk full
inline constexpr int kExitDenied = 6;         // refused: credentials or policy
inline constexpr int kExitUnavailable = 7;    // a service could not be reached

// The exit code for a failed Status.
int ExitCodeFor(const Status& status);

// The text printed under "Exit codes:" in --help.
const char* ExitCodesHelp();

}  // namespace vmseal::cli

#endif  // VMSEAL_CLI_EXIT_CODES_H_
