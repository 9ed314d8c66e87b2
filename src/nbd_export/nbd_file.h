// A read-only view of an NBD export (a unix socket served by nbdkit, e.g. an
// Export) as a RandomAccessFile, through libnbd. The host agent reads a
// disk's first bytes through it for the disk-format inspector
// (docs/format/disk-format.md) before any qemu opens the export: the
// plaintext then exists only in the caller's buffers, never in a file.
#ifndef VMSEAL_NBD_EXPORT_NBD_FILE_H_
#define VMSEAL_NBD_EXPORT_NBD_FILE_H_

#include <memory>
#include <string>

#include "base/env.h"
#include "base/status.h"

namespace vmseal::nbd_export {

// Connects to the NBD server on unix socket `socket_path` (default export
// name ""). Reads are serialized on one connection; thread-safe.
// UNAVAILABLE when the server cannot be reached. A read the server fails
// (e.g. a chunk that does not authenticate) is DATA_LOSS "export read
// failed".
StatusOr<std::unique_ptr<RandomAccessFile>> OpenNbdFile(const std::string& socket_path);

}  // namespace vmseal::nbd_export

#endif  // VMSEAL_NBD_EXPORT_NBD_FILE_H_
