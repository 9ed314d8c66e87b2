// VM management for the host agent: launches qemu-system-x86_64 on a
// decrypted disk, tracks it across agent restarts, stops and deletes it.
//
// Layout under Options::state_dir (created mode 0700, like everything below):
//   disks/<name>.img        decrypted disk (DiskPath); mode 0600
//   vms/<name>.json         per-VM state, written atomically (docs/vm.md)
//   run/<name>.serial.log   the guest's serial console (ttyS0); mode 0600
//   run/<name>.qemu.log     qemu's own stdout/stderr
//   run/<name>.qmp          QMP control socket
// qemu runs as a child of the agent in its own session (not daemonized), so
// it outlives an agent restart; a new VmManager on the same state_dir finds
// it again by pid, checked against /proc/<pid>/cmdline.
#ifndef VMSEAL_VM_VM_MANAGER_H_
#define VMSEAL_VM_VM_MANAGER_H_

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/secret_bytes.h"
#include "base/status.h"

namespace vmseal::vm {
namespace internal {
struct VmRecord;
}  // namespace internal

// The disk image's on-disk format: the driver of the disk's format node.
enum class DiskFormat { kRaw, kQcow2 };

// The firmware a VM boots with (docs/vm.md "Firmware").
enum class Firmware {
  kBios,  // SeaBIOS on qemu's default machine (i440fx).
  kEfi,   // OVMF from pflash on a q35 machine, with a per-VM copy of the
          // variable store.
};

// "bios"/"efi"; the parser returns INVALID_ARGUMENT for anything else.
const char* FirmwareName(Firmware firmware);
StatusOr<Firmware> ParseFirmware(const std::string& name);

// The OVMF images the host boots EFI guests with (Debian package `ovmf`).
// The code images are opened read-only; a vars template is copied per VM.
struct OvmfFiles {
  // Without Secure Boot: code and an empty variable store.
  std::string code = "/usr/share/OVMF/OVMF_CODE_4M.fd";
  std::string vars = "/usr/share/OVMF/OVMF_VARS_4M.fd";
  // With Secure Boot: the SMM build and a store with Secure Boot on and the
  // distribution's PK/KEK plus Microsoft's KEK/db enrolled.
  std::string secure_boot_code = "/usr/share/OVMF/OVMF_CODE_4M.ms.fd";
  std::string secure_boot_vars = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
};

// The accelerator qemu runs the guest with.
enum class Accel {
  kAuto,  // KVM when /dev/kvm can be opened read-write, TCG otherwise.
  kKvm,
  kTcg,
};

// "raw"/"qcow2", "auto"/"kvm"/"tcg"; the parsers return INVALID_ARGUMENT for
// anything else.
const char* DiskFormatName(DiskFormat format);
StatusOr<DiskFormat> ParseDiskFormat(const std::string& name);
const char* AccelName(Accel accel);
StatusOr<Accel> ParseAccel(const std::string& name);

// Why a VM's qemu ended.
enum class VmEndReason {
  kStopped,        // VmManager::Stop (or Delete) stopped it.
  kGuestPowerOff,  // qemu exited with status 0 on its own: the guest powered
                   // off (or someone else sent QMP "quit").
  kExited,         // qemu exited with a non-zero status (VmEnd::code).
  kKilled,         // qemu was killed by signal VmEnd::code, or terminated
                   // itself on SIGTERM/SIGINT/SIGHUP (qemu exits 0 then and
                   // logs "terminating on signal N").
  kUnknown,        // qemu was not a child of this process (launched by an
                   // earlier agent): it ended, its exit status is not known.
};

// "stopped", "guest_poweroff", "exited", "killed", "unknown".
const char* VmEndReasonName(VmEndReason reason);

// The end of a VM, as reported to VmManagerOptions::on_end and kept in the
// VM's state file.
struct VmEnd {
  VmEndReason reason = VmEndReason::kUnknown;
  // Exit status for kExited, signal number for kKilled, 0 otherwise.
  int code = 0;
  // One line for humans, e.g. "killed by signal 9".
  std::string text;
  // When the end was noticed, Unix milliseconds.
  int64_t unix_ms = 0;
  // The VM's VmSpec::run (0 when none was given).
  int64_t run = 0;
};

// Unprivileged VMs (docs/host.md "VM users"): ids from a range the host
// reserves. Id `first_id` is the group that may traverse the agent's
// directories to reach a VM's own files; each VM gets uid = gid = one of
// first_id+1 .. first_id+count-1, not used by another VM of this manager,
// and qemu drops to it between fork and exec. The VM's serial log, local
// disks, overlays and NBD sockets are chowned to it (0600); everything else
// the agent has stays 0600 root and unreadable to it.
struct VmUserRange {
  // 0: off (qemu runs as the agent). Must not be 0 when count > 0.
  uint32_t first_id = 0;
  // Number of ids, including first_id. 0: off; at least 2 otherwise.
  uint32_t count = 0;
};

struct VmManagerOptions {
  // Directory holding disks, state and logs. Required; created (mode 0700)
  // when missing.
  std::string state_dir;
  // qemu binary, looked up in PATH when it has no '/'.
  std::string qemu_binary = "qemu-system-x86_64";
  // Accelerator for new VMs. Default kAuto. Some nested environments expose a
  // /dev/kvm that cannot run guests: force kTcg there.
  Accel accel = Accel::kAuto;
  // The KVM device probed by kAuto. Default "/dev/kvm".
  std::string kvm_device = "/dev/kvm";
  // How long Launch waits for qemu's QMP monitor to answer before it gives
  // up and kills qemu. Default 30 s.
  int64_t launch_timeout_ms = 30000;
  // How long Stop waits after QMP "quit", then after SIGTERM, before it sends
  // SIGKILL. Default 10 s.
  int64_t stop_timeout_ms = 10000;
  // Called once for each VM whose qemu ends while this manager runs, with
  // why (VmEnd), after the state file records the end. Called from the
  // manager's watcher thread (or from the thread calling Stop/Delete for
  // kStopped) with no manager lock held: it may call the manager. May be
  // empty.
  std::function<void(const std::string& name, const VmEnd& end)> on_end;
  // How often the watcher looks at running VMs. Default 200 ms; an end is
  // noticed within about this time.
  int64_t watch_interval_ms = 200;
  // Run each VM's qemu under its own uid (VmUserRange). Default off. Needs
  // the agent to run as root; Create refuses it otherwise.
  VmUserRange vm_users;
  // swtpm binary for VmSpec::tpm, looked up in PATH when it has no '/'.
  std::string swtpm_binary = "swtpm";
  // Firmware images for VmSpec::firmware == kEfi. Checked at each EFI
  // launch (NOT_FOUND naming the file when missing), not at Create.
  OvmfFiles ovmf;
};

// Where a disk's bytes come from.
enum class DiskSource {
  kFile,  // a local raw or qcow2 file
  kNbd,   // an NBD export on a unix socket (src/nbd_export), read-only
};

// "file" / "nbd"; the parser returns INVALID_ARGUMENT for anything else.
const char* DiskSourceName(DiskSource source);
StatusOr<DiskSource> ParseDiskSource(const std::string& name);

// One disk of a VM in VmSpec::disks, attached as a virtio-blk device. The
// tenant's bytes (a local file or an NBD export) are inspected
// (src/disk_format) right before qemu starts and opened with the inspected
// format and no backing file or data file. With an overlay, or for an
// encrypted file, qemu needs the VM's disk secret (Launch's `disk_secret`).
//
// Block graph of disk i (docs/vm.md "Disks"):
//   plain file:  disk<i>-file (file) <- disk<i> (raw|qcow2)
//   encrypted:   disk<i>-file (file) <- disk<i> (qcow2, LUKS, backing null)
//   overlay:     disk<i>-file (file|nbd, read-only) <- disk<i>-base (raw|qcow2,
//                read-only) <- disk<i> (qcow2 LUKS on disk<i>-overlay-file,
//                backing disk<i>-base)
// The two layouts of the host's encrypted disk files (docs/vm.md).
enum class EncryptedFileLayout { kLuksContainer, kQcow2Luks };

struct VmDisk {
  // kFile: the file; must exist and be a regular file, its mode is narrowed
  // to 0600 at launch and Delete removes it. kNbd: the export's unix socket
  // (Delete leaves it: the export's owner stops it).
  std::string path;
  DiskFormat format = DiskFormat::kRaw;
  // Exactly one disk of a list boots (bootindex=0); the others are attached
  // in list order.
  bool boot = false;
  DiskSource source = DiskSource::kFile;
  // Where guest writes go: a qcow2 file encrypted with LUKS under the disk
  // secret (CreateEncryptedOverlay, src/vm/encrypted_disk.h), layered over
  // the disk, which qemu then opens read-only. Required for kNbd. Must exist;
  // Delete removes it.
  std::string overlay_path;
  // kFile only, without an overlay: `path` is a LUKS-encrypted qcow2 the host
  // wrote itself (copy mode, ConvertToEncrypted), opened with the disk
  // secret. `format` must be kQcow2.
  bool encrypted = false;
  // How the overlay or encrypted file is laid out. Launch sets it from the
  // file's first bytes (callers need not): kLuksContainer, a LUKS1 container
  // holding a qcow2 (what CreateEncryptedOverlay makes), or kQcow2Luks, a
  // qcow2 with qemu's built-in LUKS encryption (files made before, opened
  // as they are).
  EncryptedFileLayout encrypted_layout = EncryptedFileLayout::kLuksContainer;
  // Which of Launch's disk secrets opens the overlay or encrypted file: an
  // index into `disk_secrets` (each overlay from the pool has its own
  // secret, src/vm/overlay_pool.h). Default 0.
  uint32_t secret_slot = 0;
};

// What a VM should run with (the CPU and memory come from the OVF).
struct VmSpec {
  // Identifier: 1 to 64 of [A-Za-z0-9._-], not starting with '.'.
  std::string name;
  // The disk to boot. Must exist and be a regular file. Delete removes it, so
  // it is normally DiskPath(name). Its mode is narrowed to 0600 at launch.
  std::string disk_path;
  DiskFormat disk_format = DiskFormat::kRaw;
  // Every disk in order (the i-th is attached as the i-th virtio-blk device,
  // block nodes disk<i>-file and disk<i>). When non-empty, disk_path must be
  // empty and exactly one entry has boot set; when empty, the VM has the one
  // disk disk_path/disk_format, which boots (the single-disk form).
  std::vector<VmDisk> disks;
  // Virtual CPUs, 1..256. Default 1.
  uint32_t cpus = 1;
  // Guest memory in MiB, 16..1048576. Default 256.
  uint64_t memory_mib = 256;
  // true: one virtio NIC on qemu's user-mode network; false: no network.
  bool user_network = false;
  // The caller's number for this launch of the VM (the host agent: the
  // portal job's run), kept in the state file and returned in VmInfo and
  // VmEnd. 0: none.
  int64_t run = 0;
  // kEfi: OVMF with the VM's own variable store (run/<name>.efivars.fd,
  // copied from the template at launch, owned by the VM's uid, removed by
  // Delete). Default kBios.
  Firmware firmware = Firmware::kBios;
  // kEfi only: the Secure Boot code and vars (OvmfFiles), SMM on. A guest
  // whose loader is not signed by an enrolled key does not boot.
  bool secure_boot = false;
  // A TPM 2.0 for the guest: a swtpm of its own (docs/vm.md "vTPM"), run as
  // the VM's uid with its state in run/<name>.tpm/ (0700), joined to qemu by
  // a socket pair (-tpmdev emulator; tpm-crb for kEfi, tpm-tis for kBios).
  // It ends with qemu; Delete removes the state.
  bool tpm = false;
};

enum class VmRunState { kRunning, kStopped };

// A VM known to the manager.
struct VmInfo {
  std::string name;
  VmRunState state = VmRunState::kStopped;
  // qemu's pid as recorded at launch (meaningful while kRunning).
  pid_t pid = 0;
  // The boot disk.
  std::string disk_path;
  DiskFormat disk_format = DiskFormat::kRaw;
  // Every disk, in attachment order (the single-disk form gives one entry).
  std::vector<VmDisk> disks;
  uint32_t cpus = 0;
  uint64_t memory_mib = 0;
  // The accelerator actually used: kKvm or kTcg.
  Accel accel = Accel::kTcg;
  std::string serial_log_path;
  std::string qemu_log_path;
  std::string qmp_socket_path;
  // Launch time, Unix milliseconds.
  int64_t started_unix_ms = 0;
  // The uid (= gid) qemu runs as; 0 when it runs as the agent.
  uint32_t uid = 0;
  // VmSpec::run.
  int64_t run = 0;
  // VmSpec::firmware and secure_boot; for kEfi the VM's variable store.
  Firmware firmware = Firmware::kBios;
  bool secure_boot = false;
  std::string efi_vars_path;
  // VmSpec::tpm; the swtpm's pid and state directory.
  bool tpm = false;
  pid_t tpm_pid = 0;
  std::string tpm_state_dir;
  // Set once the VM's end has been noticed (state is then kStopped).
  bool ended = false;
  VmEnd end;
};

// Manages the qemu VMs of one host agent. Thread-safe: calls on one instance
// are serialized (WaitForSerialMarker excepted, which only reads). Two
// instances on one state_dir are only supported one after the other (an
// agent restart), except that a new instance may stop or delete VMs the old
// one launched.
//
// Ends: a watcher thread looks at every running VM each watch_interval_ms.
// qemu processes this instance launched are its children and are reaped by
// pid (waitpid on that pid only: other children of the agent, e.g. nbdkit or
// swtpm, are never reaped here), so no zombie stays; VMs an earlier agent
// launched are watched through /proc (pid alive and running the recorded
// command line). Each end is written to the state file (stopped, with the
// reason) and reported once through options.on_end.
class VmManager {
 public:
  static StatusOr<std::unique_ptr<VmManager>> Create(const VmManagerOptions& options);
  // Stops the watcher thread; running VMs keep running.
  ~VmManager();

  VmManager(const VmManager&) = delete;
  VmManager& operator=(const VmManager&) = delete;

  // Where the decrypted disk of VM `name` belongs: <state_dir>/disks/<name>.img
  // (the directory is mode 0700). INVALID_ARGUMENT for a bad name.
  StatusOr<std::string> DiskPath(const std::string& name) const;

  // Starts qemu for `spec` and returns once its monitor answers (the guest is
  // then booting). The disk is inspected first (src/disk_format): a disk the
  // host must not run, or whose format is not spec.disk_format, is
  // INVALID_ARGUMENT "unsafe_disk_format: ..." and no qemu starts.
  // Errors: INVALID_ARGUMENT (bad spec), ALREADY_EXISTS (a VM
  // of that name is known; Delete it first), NOT_FOUND (disk missing, or qemu
  // missing), FAILED_PRECONDITION (qemu exited during launch; the message
  // ends with the tail of its stderr), DEADLINE_EXCEEDED (no monitor in time;
  // qemu is killed). On error no state is left behind (the disk stays).
  //
  // `disk_secret` (the VM's 32-byte disk secret, see encrypted_disk.h) is
  // required when a disk has an overlay or is encrypted, and ignored
  // otherwise. It reaches qemu through an inherited pipe (a secret object
  // read from /dev/fd/3), never argv, the environment or a file.
  StatusOr<VmInfo> Launch(const VmSpec& spec, const SecretBytes* disk_secret = nullptr);
  // The same with one secret per slot: a disk with secret_slot k is opened
  // with disk_secrets[k] (32 bytes each); slot k > 0 reaches qemu on
  // descriptor 5 + k. INVALID_ARGUMENT when a disk names a slot with no
  // secret.
  StatusOr<VmInfo> Launch(const VmSpec& spec, const std::vector<const SecretBytes*>& disk_secrets);

  // Every VM with a state file, sorted by name; state kRunning only when its
  // recorded pid is alive and runs the recorded command line.
  StatusOr<std::vector<VmInfo>> List();

  // One VM. NOT_FOUND when unknown.
  StatusOr<VmInfo> Get(const std::string& name);

  // Stops a running VM: QMP "quit", then SIGTERM, then SIGKILL, each after
  // stop_timeout_ms. A stopped VM is left as is (OK). The disk and the logs
  // stay. NOT_FOUND when unknown. The end is recorded and reported through
  // on_end: kStopped when Stop ended it, or the reason it had already ended
  // for when the watcher had not noticed yet.
  Status Stop(const std::string& name);

  // Stops the VM and removes its disk files (local disks and overlays; not
  // NBD sockets), logs, socket and state. NOT_FOUND
  // when unknown.
  Status Delete(const std::string& name);

  // Waits until the line-oriented text `marker` appears in the VM's serial
  // log. OK when it does; DEADLINE_EXCEEDED after `timeout_ms` without it;
  // FAILED_PRECONDITION when the VM stops first; NOT_FOUND when unknown.
  Status WaitForSerialMarker(const std::string& name, const std::string& marker,
                             int64_t timeout_ms);

  // Lets VM `name`'s qemu open `path` (an NBD socket a restarted export
  // created, a new overlay): chowns it to the VM's uid, mode 0600, and lets
  // the VM users' group traverse the directories from state_dir down to it.
  // OK and nothing done when the VM runs as the agent. NOT_FOUND when the VM
  // is unknown; INVALID_ARGUMENT when `path` is not under state_dir.
  // A directory `path` (an NBD export's state dir) becomes the VM user's
  // own (0700). A VM not launched yet uses the uid UserFor reserved.
  Status GrantAccess(const std::string& name, const std::string& path);

  // Lets every VM user read `path`, a file the agent does not own per VM
  // (the nbdkit plugin the exports load): the VM users' group may traverse
  // each directory from / down to it (0710, as for state_dir), and the file
  // must be world-readable already (FAILED_PRECONDITION otherwise; its mode
  // is left alone). OK and nothing done when VM users are off.
  Status LetVmUsersRead(const std::string& path);

  // The uid (= gid) the processes of VM `name` run as: its qemu and its NBD
  // exports. The one its record holds; before Launch, one reserved for it
  // now and kept until Launch records it or ReleaseUser/Delete drops it.
  // 0 when VM users are off; RESOURCE_EXHAUSTED when the range is used up.
  StatusOr<uint32_t> UserFor(const std::string& name);
  // Drops the reservation UserFor made for a VM that was never launched.
  void ReleaseUser(const std::string& name);
  // The supplementary groups of a VM's processes other than qemu: the
  // traversal group (VmUserRange::first_id). Empty when VM users are off.
  std::vector<uint32_t> UserGroups() const;

  // The accelerator kAuto resolves to on this machine.
  Accel ResolvedAccel() const;

 private:
  explicit VmManager(VmManagerOptions options);

  std::string StatePath(const std::string& name) const;
  // The VM-user counterparts of GrantAccess with mu_ held.
  Status GrantAccessLocked(uint32_t uid, const std::string& path);
  // The lowest VM uid no VM record or reservation holds; mu_ held.
  StatusOr<uint32_t> AllocateUidLocked();
  std::string RunPath(const std::string& name, const char* suffix) const;
  StatusOr<VmInfo> GetLocked(const std::string& name);
  // Stops the qemu of a record that is not stopped and writes the record
  // with the end; mu_ held.
  StatusOr<VmEnd> StopRecordLocked(internal::VmRecord* record);

  // The watcher thread's loop and one pass over the watched VMs.
  void WatchLoop();
  void WatchOnce();
  // Records the end of `name` (pid `pid`) unless its record is already
  // stopped; returns whether it did.
  bool RecordEnd(const std::string& name, pid_t pid, const VmEnd& end);
  void Watch(const std::string& name, pid_t pid, std::vector<std::string> argv);
  void Unwatch(const std::string& name);

  struct Watched {
    pid_t pid = 0;
    std::vector<std::string> argv;
    // Rounds seen alive with an empty cmdline (exiting).
    int exiting_rounds = 0;
  };

  const VmManagerOptions options_;
  std::mutex mu_;
  // UserFor's uids of VMs not launched yet, by name; mu_ held.
  std::map<std::string, uint32_t> reserved_uids_;

  // Guards watched_ and quit_; never held while mu_ is taken.
  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  std::map<std::string, Watched> watched_;
  bool quit_ = false;
  std::thread watcher_;
};

}  // namespace vmseal::vm

#endif  // VMSEAL_VM_VM_MANAGER_H_
