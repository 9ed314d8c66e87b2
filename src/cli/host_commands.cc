#include "cli/commands.h"

namespace vmseal::cli {

void AddHostCommands(CLI::App& /*app*/, const CommandSink& /*sink*/) {}

}  // namespace vmseal::cli
