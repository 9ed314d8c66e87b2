// vmseal: the one binary. Everything lives in the component libraries.
#include "cli/cli.h"

int main(int argc, char** argv) { return vmseal::cli::Run(argc, argv); }
