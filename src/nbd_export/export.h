// The host agent's handle on a streamed-launch export: an nbdkit process
// running nbdkit-vmseal-plugin.so that serves one disk of a sealed package,
// read-only, on a unix socket, decrypted on demand (docs/nbd-export.md).
//
//   ExportOptions o;
//   o.plugin_path = ".../nbdkit-vmseal-plugin.so";
//   o.state_dir = "/var/lib/vmseal/vms/<vm>/disk0";
//   o.package_path = "/var/lib/vmseal/packages/<job>.ova";  // or o.remote
//   ASSIGN_OR_RETURN(auto e, nbd_export::Export::Start(o, data_key));
//   qemu: -blockdev e->QemuBlockdev() (driver nbd, server unix:e->socket_path())
//
// The data key goes to nbdkit over an inherited pipe, never argv, the
// environment or a file; so do the mutual-TLS CA, certificate and key of a
// remote source (the plugin never opens the agent's files). With run_as_uid
// set, nbdkit runs as that VM user and state_dir is that user's (0700).
// Files in state_dir (all 0600, the directory 0700):
// nbd.sock, nbdkit.pid, nbdkit.log, events.jsonl and, for a remote source,
// the ciphertext cache (cache.*) and progress.json. No file holds plaintext.
#ifndef VMSEAL_NBD_EXPORT_EXPORT_H_
#define VMSEAL_NBD_EXPORT_EXPORT_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/secret_bytes.h"
#include "base/status.h"

namespace vmseal::nbd_export {

struct RemoteSourceOptions {
  // "https://HOST:PORT/v1/hosts/jobs/<id>/package" (HTTP Range support).
  std::string url;
  // PEM files: the CA the server must chain to, the client certificate and
  // key for mutual TLS (paths only; the plugin reads them).
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
};

struct ExportOptions {
  // The nbdkit binary. Default "nbdkit" (from PATH).
  std::string nbdkit_path = "nbdkit";
  // The plugin shared object. Required.
  std::string plugin_path;
  // Directory of this export's socket, pid file, log, events and cache;
  // created (0700) if missing. Its path must leave room for "/nbd.sock" in a
  // unix socket address (about 100 bytes). Required.
  std::string state_dir;
  // The source: a local package path, or `remote`; exactly one.
  std::string package_path;
  RemoteSourceOptions remote;
  // ovf:id of the disk; empty = the first file of References.
  std::string disk_id;
  // When set, the package's tag must name this image / tenant.
  std::string expected_image_id;
  std::string expected_tenant;
  // Remote source: least bytes per cache miss, and the background fill.
  uint64_t readahead_bytes = uint64_t{8} << 20;
  bool prefetch = true;
  // nbdkit --exit-with-parent: nbdkit dies with the agent (Linux delivers
  // this when the *thread* that started it exits: call Start from a thread
  // that lives as long as the export). false: nbdkit outlives an agent crash
  // and Reattach adopts it. Default true.
  bool exit_with_parent = true;
  // nbdkit worker threads per connection; 0 (default): one per online CPU,
  // at least 2 (a remote source: 4, as a thread may wait for a fetch) and
  // at most 16 (ExportThreads). More threads than cores
  // only add wake-ups and per-thread 2 MiB request buffers that fall out of
  // the CPU cache: on 2 cores, 16 threads cost 1.5-2x the server CPU per
  // GiB of 2 (docs/host.md "Export read: threads").
  int threads = 0;
  // Bound on the wait for nbdkit to listen. Default 30 s.
  int start_timeout_ms = 30000;
  // The VM user nbdkit runs as (uid = gid, docs/host.md "VM users"), with
  // these supplementary groups and no new privileges; state_dir and what it
  // holds are chowned to it first. 0 (default): nbdkit runs as the agent.
  // Needs the agent to run as root.
  uint32_t run_as_uid = 0;
  std::vector<uint32_t> run_as_groups;
};

// The nbdkit --threads an export with `options.threads` gets.
int ExportThreads(const ExportOptions& options);

// Background fill of a remote source's ciphertext cache.
struct ExportProgress {
  uint64_t cached_bytes = 0;
  uint64_t total_bytes = 0;
  bool complete = false;  // the source is no longer needed
};

// One line of events.jsonl.
struct ExportEvent {
  std::string event;  // "chunk_auth_failed", "prefetch_complete", "prefetch_retrying"
  nlohmann::json fields;  // the whole line
};

// A running export. Not thread-safe. Destroying it stops nbdkit unless
// Detach() was called.
class Export {
 public:
  // Spawns nbdkit (--foreground, -r, -U, -P) with the plugin, writes the key
  // into its keyfd pipe, and waits (bounded) until it listens. On failure
  // nbdkit is stopped and the error carries the plugin's message from
  // nbdkit.log (e.g. DATA_LOSS "decryption failed" for a wrong key). A stale
  // socket or pid file in state_dir is removed first; a live nbdkit there is
  // ALREADY_EXISTS (use Reattach).
  static StatusOr<std::unique_ptr<Export>> Start(const ExportOptions& options,
                                                 const SecretBytes& data_key);
  // Start in two steps, so that nbdkit opens the package while the agent
  // still waits for the key: Spawn starts nbdkit and returns at once; the
  // plugin opens the package (remote: its metadata) and then waits on its
  // key descriptor, and nbdkit does not listen before it has the key.
  // Unlock writes the key and waits (bounded) until nbdkit listens, with
  // Start's errors. Stop (or destroying it) before Unlock closes the key
  // channel without a key: nbdkit ends having served nothing.
  static StatusOr<std::unique_ptr<Export>> Spawn(const ExportOptions& options);
  Status Unlock(const SecretBytes& data_key);
  // True between Spawn and Unlock.
  bool awaiting_key() const { return key_fd_ >= 0; }
  // After an agent restart: adopts the nbdkit whose pid file and socket are
  // in state_dir when it is alive and answers; otherwise starts a new one
  // (which reuses the persisted ciphertext cache). `reused()` tells which.
  static StatusOr<std::unique_ptr<Export>> Reattach(const ExportOptions& options,
                                                    const SecretBytes& data_key);
  // Stops the nbdkit serving `state_dir` (found by its pid file and checked
  // to be an nbdkit on that socket) without needing the key, e.g. one an
  // earlier agent started; removes socket and pid file. OK when none runs.
  static Status StopServing(const std::string& state_dir);
  ~Export();
  Export(const Export&) = delete;
  Export& operator=(const Export&) = delete;

  const std::string& socket_path() const { return socket_path_; }
  pid_t pid() const { return pid_; }
  bool reused() const { return reused_; }
  // "nbd+unix:///?socket=<socket_path>" (qemu-img, qemu-io, nbdcopy).
  std::string Uri() const;
  // The qemu -blockdev protocol node:
  // {"driver":"nbd","server":{"type":"unix","path":...},"export":""}.
  nlohmann::json QemuBlockdev() const;
  // True while the nbdkit process exists (reaps it if it ended).
  bool Running();
  // Progress of the cache fill (complete at once for a local source).
  StatusOr<ExportProgress> Progress() const;
  // Every event so far, in order.
  StatusOr<std::vector<ExportEvent>> Events() const;
  // SIGTERM, bounded wait (5 s), then SIGKILL; removes socket and pid file.
  // Keeps the cache. Idempotent.
  Status Stop();
  // Leaves nbdkit running when this object is destroyed (agent shutdown
  // with exit_with_parent=false).
  void Detach() { detached_ = true; }

 private:
  Export(ExportOptions options, pid_t pid, bool child, bool reused);
  const ExportOptions options_;
  const std::string socket_path_;
  pid_t pid_;
  const bool child_;  // our child (waitpid) or adopted (poll /proc)
  const bool reused_;
  bool detached_ = false;
  int key_fd_ = -1;  // our end of the key channel until Unlock
};

}  // namespace vmseal::nbd_export

#endif  // VMSEAL_NBD_EXPORT_EXPORT_H_
