#include "host/internal/launch_record.h"

#include <nlohmann/json.hpp>

#include "json/json.h"

namespace vmseal::host::internal {
namespace {

using nlohmann::json;

Status Corrupt(const std::string& why) { return DataLossError("launch record: " + why); }

StatusOr<std::string> Str(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) {
    return Corrupt(std::string("field \"") + key + "\" missing or not a string");
  }
  return it->get<std::string>();
}

json Wrapped(const TpmWrapped& w) {
  return {{"wrapped", crypto::Base64Encode(w.wrapped)}, {"label", crypto::Base64Encode(w.label)}};
}

StatusOr<TpmWrapped> ParseWrapped(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_object()) return Corrupt(std::string(key) + " missing");
  TpmWrapped w;
  ASSIGN_OR_RETURN(std::string wrapped, Str(*it, "wrapped"));
  ASSIGN_OR_RETURN(std::string label, Str(*it, "label"));
  auto wb = crypto::Base64Decode(wrapped);
  auto lb = crypto::Base64Decode(label);
  if (!wb.ok() || !lb.ok()) return Corrupt(std::string(key) + " is not base64");
  w.wrapped = *std::move(wb);
  w.label = *std::move(lb);
  return w;
}

}  // namespace

std::string SerializeLaunchRecord(const LaunchRecord& r) {
  json disks = json::array();
  for (const LaunchedDisk& d : r.disks) {
    disks.push_back(
        {{"id", d.id}, {"export_dir", d.export_dir}, {"format", d.format}, {"file", d.file}});
  }
  json secrets = json::array();
  for (const TpmWrapped& w : r.disk_secrets) secrets.push_back(Wrapped(w));
  json j = {{"version", kLaunchRecordVersion},
            {"vm", r.vm_name},
            {"job_id", r.job_id},
            {"mode", r.mode},
            {"url", r.url},
            {"package_path", r.package_path},
            {"image_id", r.image_id},
            {"tenant", r.tenant},
            {"disk_secrets", secrets},
            {"disks", disks}};
  if (!r.data_key.wrapped.empty()) j["data_key"] = Wrapped(r.data_key);
  return DumpJson(j, 2) + "\n";
}

StatusOr<LaunchRecord> ParseLaunchRecord(const std::string& text) {
  auto parsed = ParseJsonObject(text, "launch record");
  if (!parsed.ok()) return Corrupt(std::string(parsed.status().message()));
  const json& j = *parsed;
  if (!j.contains("version") || j["version"] != kLaunchRecordVersion) {
    return Corrupt("unsupported version");
  }
  LaunchRecord r;
  ASSIGN_OR_RETURN(r.vm_name, Str(j, "vm"));
  ASSIGN_OR_RETURN(r.job_id, Str(j, "job_id"));
  ASSIGN_OR_RETURN(r.mode, Str(j, "mode"));
  if (r.mode != "stream" && r.mode != "copy") return Corrupt("unknown mode");
  ASSIGN_OR_RETURN(r.url, Str(j, "url"));
  ASSIGN_OR_RETURN(r.package_path, Str(j, "package_path"));
  ASSIGN_OR_RETURN(r.image_id, Str(j, "image_id"));
  ASSIGN_OR_RETURN(r.tenant, Str(j, "tenant"));
  if (j.contains("disk_secret")) {
    // Written by an agent before the overlay pool: one secret.
    ASSIGN_OR_RETURN(TpmWrapped w, ParseWrapped(j, "disk_secret"));
    r.disk_secrets.push_back(std::move(w));
  } else {
    if (!j.contains("disk_secrets") || !j["disk_secrets"].is_array() ||
        j["disk_secrets"].empty()) {
      return Corrupt("disk_secrets missing");
    }
    for (const json& e : j["disk_secrets"]) {
      if (!e.is_object()) return Corrupt("a disk secret is not an object");
      json holder = {{"w", e}};
      ASSIGN_OR_RETURN(TpmWrapped w, ParseWrapped(holder, "w"));
      r.disk_secrets.push_back(std::move(w));
    }
  }
  if (j.contains("data_key")) {
    ASSIGN_OR_RETURN(r.data_key, ParseWrapped(j, "data_key"));
  }
  if (!j.contains("disks") || !j["disks"].is_array()) return Corrupt("disks missing");
  for (const json& e : j["disks"]) {
    if (!e.is_object()) return Corrupt("a disk is not an object");
    LaunchedDisk d;
    ASSIGN_OR_RETURN(d.id, Str(e, "id"));
    ASSIGN_OR_RETURN(d.export_dir, Str(e, "export_dir"));
    ASSIGN_OR_RETURN(d.format, Str(e, "format"));
    ASSIGN_OR_RETURN(d.file, Str(e, "file"));
    r.disks.push_back(std::move(d));
  }
  return r;
}

}  // namespace vmseal::host::internal
