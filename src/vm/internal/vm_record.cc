#include "vm/internal/vm_record.h"

#include <nlohmann/json.hpp>

#include "json/json.h"
#include "vm/internal/qemu_command.h"

namespace vmseal::vm::internal {
namespace {

using nlohmann::json;

Status Corrupt(const std::string& why) { return DataLossError("vm state file: " + why); }

StatusOr<std::string> GetString(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) {
    return Corrupt(std::string("field \"") + key + "\" missing or not a string");
  }
  return it->get<std::string>();
}

StatusOr<int64_t> GetInt(const json& j, const char* key, int64_t min, int64_t max) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) {
    return Corrupt(std::string("field \"") + key + "\" missing or not an integer");
  }
  int64_t v = it->get<int64_t>();
  if (v < min || v > max) return Corrupt(std::string("field \"") + key + "\" out of range");
  return v;
}

}  // namespace

std::string SerializeVmRecord(const VmRecord& record) {
  const VmInfo& i = record.info;
  json j = {
      {"version", kVmRecordVersion},
      {"name", i.name},
      {"pid", static_cast<int64_t>(i.pid)},
      {"stopped", record.stopped},
      {"disk_path", i.disk_path},
      {"disk_format", DiskFormatName(i.disk_format)},
      {"cpus", i.cpus},
      {"memory_mib", i.memory_mib},
      {"accel", AccelName(i.accel)},
      {"serial_log", i.serial_log_path},
      {"qemu_log", i.qemu_log_path},
      {"qmp_socket", i.qmp_socket_path},
      {"started_unix_ms", i.started_unix_ms},
      {"argv", record.argv},
  };
  json disks = json::array();
  for (const VmDisk& d : i.disks) {
    json e = {{"path", d.path}, {"format", DiskFormatName(d.format)}, {"boot", d.boot}};
    // Only when not the defaults, so that plain-file records stay as before.
    if (d.source != DiskSource::kFile) e["source"] = DiskSourceName(d.source);
    if (!d.overlay_path.empty()) e["overlay"] = d.overlay_path;
    if (d.encrypted) e["encrypted"] = true;
    disks.push_back(std::move(e));
  }
  j["disks"] = disks;
  // Only for a VM run under a VM user, so that other records stay as before.
  if (i.uid != 0) j["uid"] = static_cast<int64_t>(i.uid);
  if (i.run != 0) j["run"] = i.run;
  // Only for EFI, so that BIOS records stay as before.
  if (i.firmware == Firmware::kEfi) {
    j["firmware"] = FirmwareName(i.firmware);
    j["efi_vars"] = i.efi_vars_path;
    if (i.secure_boot) j["secure_boot"] = true;
  }
  if (i.tpm) {
    j["tpm"] = {{"pid", static_cast<int64_t>(i.tpm_pid)},
                {"state_dir", i.tpm_state_dir},
                {"argv", record.tpm_argv}};
  }
  if (i.ended) {
    j["end"] = {{"reason", VmEndReasonName(i.end.reason)},
                {"code", i.end.code},
                {"text", i.end.text},
                {"unix_ms", i.end.unix_ms}};
    if (i.end.run != 0) j["end"]["run"] = i.end.run;
  }
  return j.dump(2) + "\n";
}

StatusOr<VmRecord> ParseVmRecord(const std::string& text) {
  if (text.size() > kMaxVmRecordBytes) return Corrupt("larger than 64 KiB");
  StatusOr<json> parsed = ParseJson(text);
  if (!parsed.ok()) return Corrupt("not valid JSON: " + std::string(parsed.status().message()));
  json j = *std::move(parsed);
  if (!j.is_object()) return Corrupt("not a JSON object");
  ASSIGN_OR_RETURN(int64_t version, GetInt(j, "version", 0, INT32_MAX));
  if (version != kVmRecordVersion) {
    return Corrupt("unsupported version " + std::to_string(version));
  }
  VmRecord r;
  VmInfo& i = r.info;
  ASSIGN_OR_RETURN(i.name, GetString(j, "name"));
  Status name_ok = ValidateVmName(i.name);
  if (!name_ok.ok()) return Corrupt(name_ok.message());
  ASSIGN_OR_RETURN(int64_t pid, GetInt(j, "pid", 1, INT32_MAX));
  i.pid = static_cast<pid_t>(pid);
  auto stopped = j.find("stopped");
  if (stopped == j.end() || !stopped->is_boolean()) {
    return Corrupt("field \"stopped\" missing or not a boolean");
  }
  r.stopped = stopped->get<bool>();
  ASSIGN_OR_RETURN(i.disk_path, GetString(j, "disk_path"));
  ASSIGN_OR_RETURN(std::string format, GetString(j, "disk_format"));
  auto parsed_format = ParseDiskFormat(format);
  if (!parsed_format.ok()) return Corrupt(parsed_format.status().message());
  i.disk_format = *parsed_format;
  ASSIGN_OR_RETURN(int64_t cpus, GetInt(j, "cpus", 1, kMaxCpus));
  i.cpus = static_cast<uint32_t>(cpus);
  ASSIGN_OR_RETURN(int64_t memory, GetInt(j, "memory_mib", kMinMemoryMib, kMaxMemoryMib));
  i.memory_mib = static_cast<uint64_t>(memory);
  ASSIGN_OR_RETURN(std::string accel, GetString(j, "accel"));
  auto parsed_accel = ParseAccel(accel);
  if (!parsed_accel.ok() || *parsed_accel == Accel::kAuto) {
    return Corrupt("field \"accel\" must be kvm or tcg");
  }
  i.accel = *parsed_accel;
  ASSIGN_OR_RETURN(i.serial_log_path, GetString(j, "serial_log"));
  ASSIGN_OR_RETURN(i.qemu_log_path, GetString(j, "qemu_log"));
  ASSIGN_OR_RETURN(i.qmp_socket_path, GetString(j, "qmp_socket"));
  ASSIGN_OR_RETURN(i.started_unix_ms, GetInt(j, "started_unix_ms", 0, INT64_MAX));
  if (j.contains("uid")) {
    ASSIGN_OR_RETURN(int64_t uid, GetInt(j, "uid", 1, UINT32_MAX - 1));
    i.uid = static_cast<uint32_t>(uid);
  }
  if (j.contains("run")) {
    ASSIGN_OR_RETURN(i.run, GetInt(j, "run", 1, INT64_MAX));
  }
  if (j.contains("firmware")) {
    ASSIGN_OR_RETURN(std::string fw, GetString(j, "firmware"));
    auto parsed_fw = ParseFirmware(fw);
    if (!parsed_fw.ok()) return Corrupt(parsed_fw.status().message());
    i.firmware = *parsed_fw;
    if (i.firmware == Firmware::kEfi) {
      ASSIGN_OR_RETURN(i.efi_vars_path, GetString(j, "efi_vars"));
    }
  }
  if (j.contains("secure_boot")) {
    if (!j["secure_boot"].is_boolean()) return Corrupt("field \"secure_boot\" not a boolean");
    i.secure_boot = j["secure_boot"].get<bool>();
  }
  if (j.contains("tpm")) {
    const json& t = j["tpm"];
    if (!t.is_object()) return Corrupt("field \"tpm\" is not an object");
    i.tpm = true;
    ASSIGN_OR_RETURN(int64_t tpm_pid, GetInt(t, "pid", 1, INT32_MAX));
    i.tpm_pid = static_cast<pid_t>(tpm_pid);
    ASSIGN_OR_RETURN(i.tpm_state_dir, GetString(t, "state_dir"));
    auto targv = t.find("argv");
    if (targv == t.end() || !targv->is_array() || targv->empty()) {
      return Corrupt("field \"tpm.argv\" missing or not a non-empty array");
    }
    for (const json& a : *targv) {
      if (!a.is_string()) return Corrupt("field \"tpm.argv\" holds a non-string");
      r.tpm_argv.push_back(a.get<std::string>());
    }
  }
  auto argv = j.find("argv");
  if (argv == j.end() || !argv->is_array() || argv->empty()) {
    return Corrupt("field \"argv\" missing or not a non-empty array");
  }
  for (const json& a : *argv) {
    if (!a.is_string()) return Corrupt("field \"argv\" holds a non-string");
    r.argv.push_back(a.get<std::string>());
  }
  // "disks" is optional (records of the single-disk form written before it
  // existed): then the one boot disk disk_path/disk_format.
  auto disks = j.find("disks");
  if (disks == j.end()) {
    VmDisk d;
    d.path = i.disk_path;
    d.format = i.disk_format;
    d.boot = true;
    i.disks.push_back(d);
  } else {
    if (!disks->is_array()) return Corrupt("field \"disks\" is not an array");
    for (const json& e : *disks) {
      if (!e.is_object()) return Corrupt("field \"disks\" holds a non-object");
      VmDisk d;
      ASSIGN_OR_RETURN(d.path, GetString(e, "path"));
      ASSIGN_OR_RETURN(std::string f, GetString(e, "format"));
      auto pf = ParseDiskFormat(f);
      if (!pf.ok()) return Corrupt(pf.status().message());
      d.format = *pf;
      auto boot = e.find("boot");
      if (boot == e.end() || !boot->is_boolean()) {
        return Corrupt("field \"disks[].boot\" missing or not a boolean");
      }
      d.boot = boot->get<bool>();
      if (e.contains("source")) {
        ASSIGN_OR_RETURN(std::string src, GetString(e, "source"));
        auto ps = ParseDiskSource(src);
        if (!ps.ok()) return Corrupt(ps.status().message());
        d.source = *ps;
      }
      if (e.contains("overlay")) {
        ASSIGN_OR_RETURN(d.overlay_path, GetString(e, "overlay"));
      }
      if (e.contains("encrypted")) {
        if (!e["encrypted"].is_boolean()) return Corrupt("field \"disks[].encrypted\" not a boolean");
        d.encrypted = e["encrypted"].get<bool>();
      }
      i.disks.push_back(d);
    }
  }
  // "end" is optional: records written before ends were tracked, and VMs
  // that have not ended, have none.
  auto end = j.find("end");
  if (end != j.end()) {
    if (!end->is_object()) return Corrupt("field \"end\" is not an object");
    ASSIGN_OR_RETURN(std::string reason, GetString(*end, "reason"));
    bool known = false;
    for (VmEndReason rr : {VmEndReason::kStopped, VmEndReason::kGuestPowerOff,
                           VmEndReason::kExited, VmEndReason::kKilled, VmEndReason::kUnknown}) {
      if (reason == VmEndReasonName(rr)) {
        i.end.reason = rr;
        known = true;
      }
    }
    if (!known) return Corrupt("field \"end.reason\" unknown: " + reason);
    ASSIGN_OR_RETURN(int64_t code, GetInt(*end, "code", INT32_MIN, INT32_MAX));
    i.end.code = static_cast<int>(code);
    ASSIGN_OR_RETURN(i.end.text, GetString(*end, "text"));
    ASSIGN_OR_RETURN(i.end.unix_ms, GetInt(*end, "unix_ms", 0, INT64_MAX));
    i.ended = true;
  }
  return r;
}

}  // namespace vmseal::vm::internal
