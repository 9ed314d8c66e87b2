// Where the ciphertext of a sealed package comes from when it is not a local
// file: byte ranges of one remote object (the portal's package route), read
// by HTTP Range requests over mutual TLS.
#ifndef VMSEAL_NBD_EXPORT_RANGE_SOURCE_H_
#define VMSEAL_NBD_EXPORT_RANGE_SOURCE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "base/secret_bytes.h"
#include "base/status.h"

namespace vmseal::nbd_export {

// One remote object read by ranges. Implementations are thread-safe: Fetch
// may be called from several threads at once.
class RangeSource {
 public:
  virtual ~RangeSource() = default;
  // The object's size in bytes, as learned when the source was created.
  virtual uint64_t size() const = 0;
  // What the object is ("sha256:<hex>" when the server announces the
  // content's digest in X-Content-SHA256, else the URL), so that a cache of
  // it is never reused for another object.
  virtual std::string identity() const = 0;
  // Reads exactly out.size() bytes at `offset` (offset + out.size() <=
  // size()). UNAVAILABLE when the server cannot be reached or the transfer
  // breaks (after retries); DATA_LOSS when the server answers something that
  // is not the requested range of the same object.
  virtual Status Fetch(uint64_t offset, std::span<uint8_t> out) = 0;
};

struct HttpsRangeSourceOptions {
  // "https://HOST:PORT/PATH". The certificate of HOST must name it (IP or
  // DNS subjectAltName) and chain to `ca_file`. Required.
  std::string url;
  // PEM CA certificate(s) the server must chain to (never the system store).
  std::string ca_file;
  // PEM client certificate and key for mutual TLS; both or neither.
  std::string cert_file;
  std::string key_file;
  // Or the PEM text itself, used instead of the matching *_file when set:
  // an export running as a VM user, which cannot read the agent's files,
  // receives it over inherited descriptors (docs/nbd-export.md).
  std::string ca_pem;
  std::string cert_pem;
  std::shared_ptr<const SecretBytes> key_pem;
  // Connect and read timeout per request, seconds. Default 30.
  int timeout_seconds = 30;
  // Attempts per range on a transport failure (each on a new connection).
  // Default 3.
  int attempts = 3;
};

// A RangeSource over HTTPS (TLS 1.3, pinned CA, optional client
// certificate). The CA, certificate and key are read and parsed once, here.
// Learns the size with a first one-byte Range request; a
// server that ignores Range (200 instead of 206) is refused. Keeps a small
// pool of kept-alive connections, one per concurrent caller.
StatusOr<std::unique_ptr<RangeSource>> NewHttpsRangeSource(const HttpsRangeSourceOptions& options);

// A RangeSource over a local file, for tests and the benchmark's baseline.
StatusOr<std::unique_ptr<RangeSource>> NewFileRangeSource(const std::string& path);

}  // namespace vmseal::nbd_export

#endif  // VMSEAL_NBD_EXPORT_RANGE_SOURCE_H_
