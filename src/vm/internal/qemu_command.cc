#include "vm/internal/qemu_command.h"

#include <string>

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
  if (spec.disk_path.empty()) return InvalidArgumentError("vm disk path is empty");
  return OkStatus();
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

std::string DiskProtocolNode(const VmSpec& spec) {
  nlohmann::json node = {{"driver", "file"},
                         {"node-name", kDiskFileNodeName},
                         {"filename", spec.disk_path}};
  return DumpJson(node);
}

std::string DiskFormatNode(const VmSpec& spec) {
  nlohmann::json node = {{"driver", DiskFormatName(spec.disk_format)},
                         {"node-name", kDiskNodeName},
                         {"file", kDiskFileNodeName}};
  // Whatever a qcow2 header names as its backing file, qemu opens none.
  if (spec.disk_format == DiskFormat::kQcow2) node["backing"] = nullptr;
  return DumpJson(node);
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
      "-chardev", "socket,id=qmp0,path=" + QemuEscape(paths.qmp_socket) + ",server=on,wait=off",
      "-mon", "chardev=qmp0,mode=control",
      "-sandbox", kQemuSandbox,
      "-blockdev", DiskProtocolNode(spec),
      "-blockdev", DiskFormatNode(spec),
      "-device", std::string("virtio-blk-pci,drive=") + kDiskNodeName + ",bootindex=0",
  };
  if (spec.user_network) {
    argv.insert(argv.end(), {"-nic", "user,model=virtio-net-pci"});
  } else {
    argv.insert(argv.end(), {"-nic", "none"});
  }
  return argv;
}

}  // namespace vmseal::vm::internal
