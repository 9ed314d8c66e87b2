// `vmseal demo`: the whole system on loopback, narrated. It starts a KMS
// (SQLite, its own CA), the portal (embedded object store) and two hosts,
// each with its own swtpm (one measured as trusted, one tampered), builds the
// sample bootable image and plays the customer: register, fetch certificate
// and agent, seal, upload, launch. Every step runs the `vmseal` command a
// user would type, and prints it.
#ifndef VMSEAL_DEMO_DEMO_H_
#define VMSEAL_DEMO_DEMO_H_

#include <string>

#include "base/status.h"

namespace vmseal::demo {

struct DemoOptions {
  // The vmseal binary that plays every role (default: this process's).
  std::string vmseal_binary;
  // scripts/build-sample-image.sh (default: found beside the binary's
  // source tree, or via VMSEAL_SOURCE_DIR).
  std::string sample_image_script;
  // Where to put every file (default: a fresh temp dir, removed at the end
  // unless `keep`).
  std::string work_dir;
  // Leave everything running and wait for SIGINT/SIGTERM.
  bool keep = false;
  // Narration off (errors are still printed).
  bool quiet = false;
};

// Runs the demo; every process it started is stopped before it returns.
Status RunSystemDemo(const DemoOptions& options);

}  // namespace vmseal::demo

#endif  // VMSEAL_DEMO_DEMO_H_
