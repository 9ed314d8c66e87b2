#include "vm/internal/qemu_command.h"

#include <set>
#include <string>
#include <utility>

#include "json/json.h"

namespace vmseal::vm::internal {

Status ValidateVmName(const std::string& name) {
  if (name.empty() || name.size() > kMaxNameLength) {
    return InvalidArgumentError("vm name must be 1 to 64 characters");
  }
  if (name[0] == '.') return InvalidArgumentError("vm name must not start with '.'");
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return InvalidArgumentError("vm name may only contain [A-Za-z0-9._-]");
  }
  return OkStatus();
}

Status ValidateVmSpec(const VmSpec& spec) {
  RETURN_IF_ERROR(ValidateVmName(spec.name));
  if (spec.cpus < 1 || spec.cpus > kMaxCpus) {
    return InvalidArgumentError("vm cpus must be 1.." + std::to_string(kMaxCpus) + ", got " +
                                std::to_string(spec.cpus));
  }
  if (spec.memory_mib < kMinMemoryMib || spec.memory_mib > kMaxMemoryMib) {
    return InvalidArgumentError("vm memory must be " + std::to_string(kMinMemoryMib) + ".." +
                                std::to_string(kMaxMemoryMib) + " MiB, got " +
                                std::to_string(spec.memory_mib));
  }
  if (spec.secure_boot && spec.firmware != Firmware::kEfi) {
    return InvalidArgumentError("vm secure boot needs EFI firmware");
  }
  if (spec.disks.empty()) {
    if (spec.disk_path.empty()) return InvalidArgumentError("vm disk path is empty");
    return OkStatus();
  }
  if (!spec.disk_path.empty()) {
    return InvalidArgumentError("vm spec has both disk_path and a disk list");
  }
  if (spec.disks.size() > kMaxDisks) {
    return InvalidArgumentError("vm has more than " + std::to_string(kMaxDisks) + " disks");
  }
  size_t boots = 0;
  std::vector<std::pair<std::string, size_t>> files;  // path, disk index
  for (size_t i = 0; i < spec.disks.size(); ++i) {
    const VmDisk& d = spec.disks[i];
    const std::string which = "vm disk " + std::to_string(i);
    if (d.path.empty()) return InvalidArgumentError(which + " path is empty");
    if (d.source == DiskSource::kNbd && d.overlay_path.empty()) {
      return InvalidArgumentError(which + " is an NBD export without an overlay");
    }
    if (d.encrypted && (d.source != DiskSource::kFile || !d.overlay_path.empty() ||
                        d.format != DiskFormat::kQcow2)) {
      return InvalidArgumentError(which + ": only a local qcow2 without an overlay can be "
                                  "encrypted");
    }
    for (const std::string* p : {&d.path, &d.overlay_path}) {
      if (p->empty()) continue;
      for (const auto& [file, j] : files) {
        if (file == *p) {
          return InvalidArgumentError("vm disks " + std::to_string(j) + " and " +
                                      std::to_string(i) + " are the same file");
        }
      }
      files.emplace_back(*p, i);
    }
    boots += d.boot ? 1 : 0;
  }
  if (boots != 1) {
    return InvalidArgumentError("vm disk list must have exactly one boot disk, has " +
                                std::to_string(boots));
  }
  return OkStatus();
}

std::vector<VmDisk> DisksOf(const VmSpec& spec) {
  if (!spec.disks.empty()) return spec.disks;
  VmDisk disk;
  disk.path = spec.disk_path;
  disk.format = spec.disk_format;
  disk.boot = true;
  return {disk};
}

std::string DiskFileNodeName(size_t index) { return "disk" + std::to_string(index) + "-file"; }
std::string DiskNodeName(size_t index) { return "disk" + std::to_string(index); }
std::string DiskBaseNodeName(size_t index) { return "disk" + std::to_string(index) + "-base"; }
std::string DiskOverlayFileNodeName(size_t index) {
  return "disk" + std::to_string(index) + "-overlay-file";
}
std::string DiskLuksNodeName(size_t index) { return "disk" + std::to_string(index) + "-luks"; }
std::string DiskOverlayLuksNodeName(size_t index) {
  return "disk" + std::to_string(index) + "-overlay-luks";
}

bool NeedsDiskSecret(const VmDisk& disk) { return disk.encrypted || !disk.overlay_path.empty(); }
std::string DiskSecretId(uint32_t slot) {
  return slot == 0 ? std::string(kDiskSecretId)
                   : std::string(kDiskSecretId) + "-" + std::to_string(slot);
}

int DiskSecretFd(uint32_t slot) {
  return slot == 0 ? kDiskSecretFd : kExtraDiskSecretFdBase + static_cast<int>(slot) - 1;
}

std::vector<uint32_t> DiskSecretSlots(const VmSpec& spec) {
  std::set<uint32_t> slots;
  for (const VmDisk& d : DisksOf(spec)) {
    if (NeedsDiskSecret(d)) slots.insert(d.secret_slot);
  }
  return {slots.begin(), slots.end()};
}

bool NeedsDiskSecret(const VmSpec& spec) {
  for (const VmDisk& d : DisksOf(spec)) {
    if (NeedsDiskSecret(d)) return true;
  }
  return false;
}

std::string QemuEscape(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    out += c;
    if (c == ',') out += ',';
  }
  return out;
}

std::string DiskProtocolNode(const VmDisk& disk, size_t index) {
  nlohmann::json node;
  if (disk.source == DiskSource::kNbd) {
    node = {{"driver", "nbd"},
            {"node-name", DiskFileNodeName(index)},
            {"server", {{"type", "unix"}, {"path", disk.path}}},
            {"export", ""},
            {"reconnect-delay", kNbdReconnectDelaySeconds}};
  } else {
    node = {{"driver", "file"}, {"node-name", DiskFileNodeName(index)}, {"filename", disk.path}};
  }
  if (!disk.overlay_path.empty()) node["read-only"] = true;
  return DumpJson(node);
}

std::string DiskFormatNode(const VmDisk& disk, size_t index) {
  const bool overlay = !disk.overlay_path.empty();
  nlohmann::json node = {{"driver", DiskFormatName(disk.format)},
                         {"node-name", overlay ? DiskBaseNodeName(index) : DiskNodeName(index)},
                         {"file", DiskFileNodeName(index)}};
  // Whatever a qcow2 header names as its backing file, qemu opens none.
  if (disk.format == DiskFormat::kQcow2) node["backing"] = nullptr;
  if (overlay) node["read-only"] = true;
  if (disk.encrypted) {
    if (disk.encrypted_layout == EncryptedFileLayout::kQcow2Luks) {
      node["encrypt"] = {{"format", "luks"}, {"key-secret", DiskSecretId(disk.secret_slot)}};
    } else {
      node["file"] = DiskLuksNodeName(index);
    }
  }
  return DumpJson(node);
}

// The LUKS container node of an encrypted disk file over its file node.
static std::string DiskLuksNode(const std::string& node_name, const std::string& file_node,
                         uint32_t secret_slot) {
  return DumpJson({{"driver", "luks"},
                   {"node-name", node_name},
                   {"file", file_node},
                   {"key-secret", DiskSecretId(secret_slot)}});
}

std::vector<std::string> DiskBlockdevs(const VmDisk& disk, size_t index) {
  std::vector<std::string> out = {DiskProtocolNode(disk, index)};
  const bool container = disk.encrypted_layout == EncryptedFileLayout::kLuksContainer;
  if (disk.encrypted && container) {
    out.push_back(DiskLuksNode(DiskLuksNodeName(index), DiskFileNodeName(index), disk.secret_slot));
  }
  out.push_back(DiskFormatNode(disk, index));
  if (!disk.overlay_path.empty()) {
    out.push_back(DumpJson({{"driver", "file"},
                            {"node-name", DiskOverlayFileNodeName(index)},
                            {"filename", disk.overlay_path}}));
    // The overlay names no backing file in its header; its backing is the
    // node built above, given here.
    nlohmann::json overlay = {{"driver", "qcow2"},
                              {"node-name", DiskNodeName(index)},
                              {"file", DiskOverlayFileNodeName(index)},
                              {"backing", DiskBaseNodeName(index)}};
    if (container) {
      out.push_back(DiskLuksNode(DiskOverlayLuksNodeName(index), DiskOverlayFileNodeName(index),
                                 disk.secret_slot));
      overlay["file"] = DiskOverlayLuksNodeName(index);
    } else {
      overlay["encrypt"] = {{"format", "luks"}, {"key-secret", DiskSecretId(disk.secret_slot)}};
    }
    out.push_back(DumpJson(overlay));
  }
  return out;
}

std::string DiskProtocolNode(const VmSpec& spec) { return DiskProtocolNode(DisksOf(spec)[0], 0); }
std::string DiskFormatNode(const VmSpec& spec) { return DiskFormatNode(DisksOf(spec)[0], 0); }

std::vector<std::string> BuildSwtpmArgv(const std::string& swtpm_binary,
                                        const std::string& state_dir) {
  return {swtpm_binary,
          "socket",
          "--tpm2",
          "--tpmstate",
          "dir=" + state_dir + ",mode=0600",
          "--ctrl",
          "type=unixio,clientfd=" + std::to_string(kSwtpmCtrlFd),
          "--terminate"};
}

std::vector<std::string> BuildQemuArgv(const std::string& qemu_binary, const VmSpec& spec,
                                       Accel accel, const QemuPaths& paths) {
  std::vector<std::string> argv = {
      qemu_binary,
      "-name", "vmseal-" + spec.name,
      "-nodefaults", "-no-user-config",
      "-display", "none",
      "-accel", accel == Accel::kKvm ? "kvm" : "tcg",
      "-smp", std::to_string(spec.cpus),
      "-m", std::to_string(spec.memory_mib) + "M",
      "-chardev", "file,id=serial0,path=" + QemuEscape(paths.serial_log),
      "-serial", "chardev:serial0",
      "-chardev", (paths.qmp_fd >= 0 ? "socket,id=qmp0,fd=" + std::to_string(paths.qmp_fd)
                                      : "socket,id=qmp0,path=" + QemuEscape(paths.qmp_socket)) +
                      ",server=on,wait=off",
      "-mon", "chardev=qmp0,mode=control",
      "-sandbox", kQemuSandbox,
  };
  if (spec.firmware == Firmware::kEfi) {
    // OVMF from flash: the code read-only, the VM's own variable store
    // writable. Secure Boot needs SMM, so that only SMM code may write the
    // authenticated variables (the secure pflash).
    argv.insert(argv.end(),
                {"-blockdev",
                 DumpJson({{"driver", "file"}, {"node-name", "efi-code-file"},
                           {"filename", paths.efi_code}, {"read-only", true}}),
                 "-blockdev",
                 DumpJson({{"driver", "raw"}, {"node-name", kEfiCodeNodeName},
                           {"file", "efi-code-file"}, {"read-only", true}}),
                 "-blockdev",
                 DumpJson({{"driver", "file"}, {"node-name", "efi-vars-file"},
                           {"filename", paths.efi_vars}}),
                 "-blockdev",
                 DumpJson({{"driver", "raw"}, {"node-name", kEfiVarsNodeName},
                           {"file", "efi-vars-file"}}),
                 "-machine",
                 std::string("q35,pflash0=") + kEfiCodeNodeName + ",pflash1=" + kEfiVarsNodeName +
                     (spec.secure_boot ? ",smm=on" : "")});
    if (spec.secure_boot) {
      argv.insert(argv.end(), {"-global", "driver=cfi.pflash01,property=secure,value=on"});
    }
  }
  for (uint32_t slot : DiskSecretSlots(spec)) {
    argv.insert(argv.end(), {"-object", "secret,id=" + DiskSecretId(slot) +
                                            ",format=raw,file=/dev/fd/" +
                                            std::to_string(DiskSecretFd(slot))});
  }
  if (spec.tpm) {
    // The emulator's control channel is one end of a socket pair; qemu then
    // hands swtpm the data channel over it.
    argv.insert(argv.end(),
                {"-chardev", "socket,id=tpm0-ctrl,fd=" + std::to_string(kTpmCtrlFd),
                 "-tpmdev", "emulator,id=tpm0,chardev=tpm0-ctrl",
                 "-device", spec.firmware == Firmware::kEfi ? "tpm-crb,tpmdev=tpm0"
                                                            : "tpm-tis,tpmdev=tpm0"});
  }
  const std::vector<VmDisk> disks = DisksOf(spec);
  for (size_t i = 0; i < disks.size(); ++i) {
    for (const std::string& node : DiskBlockdevs(disks[i], i)) {
      argv.insert(argv.end(), {"-blockdev", node});
    }
    std::string device = "virtio-blk-pci,drive=" + DiskNodeName(i);
    if (disks[i].boot) device += ",bootindex=0";
    argv.insert(argv.end(), {"-device", device});
  }
  if (spec.user_network) {
    argv.insert(argv.end(), {"-nic", "user,model=virtio-net-pci"});
  } else {
    argv.insert(argv.end(), {"-nic", "none"});
  }
  return argv;
}

}  // namespace vmseal::vm::internal
