// A pool of empty LUKS-encrypted qcow2 overlays made ahead of time
// (docs/vm.md "Overlay pool").
//
// Creating an encrypted overlay costs qemu-img's PBKDF benchmark (two runs
// of >= 0.5 s CPU each, 4-7 s wall on a loaded host), whatever iter-time is
// asked for. Opening or growing one costs no benchmark. So the pool makes
// overlays in the background, each under its own fresh 32-byte secret, at a
// tiny virtual size; a launch takes one, renames it into the VM's directory
// and grows it to the disk's size (~0.1 s).
//
// Secrets live only in this object's memory (SecretBytes, wiped). A pool
// file whose secret is gone (the agent stopped or crashed) can never be
// opened again: Create shreds every file it finds in the pool directory,
// and the destructor shreds the ready ones. Shredding overwrites the LUKS
// header area (the key slots holding the wrapped master key) and unlinks.
//
// Thread safety: every method may be called from any thread.
#ifndef VMSEAL_VM_OVERLAY_POOL_H_
#define VMSEAL_VM_OVERLAY_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "vm/encrypted_disk.h"

namespace vmseal::vm {

struct OverlayPoolOptions {
  // The pool's directory (created mode 0700; must be on the same file system
  // as the VMs' directories, since Take renames). Every file in it when the
  // pool is created is an orphan and is shredded. Required.
  std::string dir;
  // Overlays kept ready. 0 disables the pool: Take always creates on the
  // slow path. Default 2.
  size_t target = 2;
  // qemu-img for creating (background, at qemu_img.nice_value) and growing
  // (at the caller's priority). Default: nice 19.
  QemuImgOptions qemu_img = {.nice_value = 19};
  // Virtual size the pool creates overlays at; Take grows them. Default 1 MiB.
  uint64_t initial_size_bytes = 1 << 20;
};

class OverlayPool {
 public:
  // Creates the directory, shreds orphans and starts the background filler.
  static StatusOr<std::unique_ptr<OverlayPool>> Create(const OverlayPoolOptions& options);

  // Stops the filler (waits for a running qemu-img) and shreds the ready
  // overlays: their secrets die with the pool.
  ~OverlayPool();

  OverlayPool(const OverlayPool&) = delete;
  OverlayPool& operator=(const OverlayPool&) = delete;

  // An empty encrypted overlay at `path` (mode 0600, must not exist) of
  // `virtual_size_bytes`, and its secret. A ready overlay is renamed there
  // and grown; when none is ready (pool empty or disabled) one is created on
  // the slow path (CreateEncryptedOverlay, counted in Stats). Wakes the
  // filler. Errors as CreateEncryptedOverlay; on error nothing is at `path`.
  StatusOr<SecretBytes> Take(const std::string& path, uint64_t virtual_size_bytes);

  struct Stats {
    uint64_t ready = 0;               // overlays waiting now
    uint64_t made_in_background = 0;  // by the filler, since Create
    uint64_t taken_from_pool = 0;     // Take served by a ready overlay
    uint64_t made_on_slow_path = 0;   // Take that had to create one
    uint64_t orphans_shredded = 0;    // files found by Create
    uint64_t fill_failures = 0;       // filler's qemu-img runs that failed
  };
  Stats GetStats() const;

  // Blocks until `target` overlays are ready or `timeout_ms` passes; returns
  // whether the pool is full. For tests and benchmarks.
  bool WaitUntilFull(int64_t timeout_ms);

  // The pool's directory.
  const std::string& dir() const { return options_.dir; }

 private:
  struct Ready {
    std::string path;
    SecretBytes secret;
  };

  explicit OverlayPool(const OverlayPoolOptions& options);
  void FillLoop();

  const OverlayPoolOptions options_;
  const std::string tag_;  // in this pool's file names: o-<tag>-<n>.qcow2
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Ready> ready_;  // guarded by mu_
  Stats stats_;              // guarded by mu_ (ready computed)
  bool stop_ = false;        // guarded by mu_
  uint64_t next_id_ = 0;     // guarded by mu_
  std::atomic<bool> cancel_{false};  // kills the filler's qemu-img at shutdown
  std::thread filler_;
};

// Overwrites regular file `path` (not following a symlink) with zeros, syncs
// and unlinks it; anything else at `path` is only unlinked. OK when nothing
// is there. For encrypted overlays whose secret is lost: the LUKS key
// material (the key slots in the header) is gone before the name is.
Status ShredFile(const std::string& path);

}  // namespace vmseal::vm

#endif  // VMSEAL_VM_OVERLAY_POOL_H_
