#include "host/host_config.h"
#include "json/json.h"

#include <set>

#include <nlohmann/json.hpp>

namespace vmseal::host {
namespace {

using json = nlohmann::json;

Status RequireString(const json& j, const char* key, std::string* out, bool required) {
  if (!j.contains(key)) {
    if (required) return InvalidArgumentError(std::string("host config: '") + key + "' is required");
    return OkStatus();
  }
  if (!j[key].is_string() || (required && j[key].get_ref<const std::string&>().empty())) {
    return InvalidArgumentError(std::string("host config: '") + key +
                                "' must be a non-empty string");
  }
  *out = j[key].get<std::string>();
  return OkStatus();
}

Status ReadSeconds(const json& j, const char* key, double* out) {
  if (!j.contains(key)) return OkStatus();
  if (!j[key].is_number() || j[key].get<double>() < 0.01 || j[key].get<double>() > 86400) {
    return InvalidArgumentError(std::string("host config: '") + key +
                                "' must be a number of seconds in [0.01, 86400]");
  }
  *out = j[key].get<double>();
  return OkStatus();
}

}  // namespace

StatusOr<HostConfig> ParseHostConfig(std::string_view text) {
  StatusOr<json> parsed = ParseJsonObject(text, "host config");
  if (!parsed.ok()) return parsed.status().WithPrefix("host config");
  json j = *std::move(parsed);
  static const std::set<std::string> kKeys = {
      "portal_url", "kms_url", "ca_file", "cert_file", "key_file", "tpm_tcti", "state_dir",
      "image_store_dir", "pcr_selection", "heartbeat_interval_seconds",
      "reattest_interval_seconds", "poll_interval_seconds", "allow_plain_images", "capacity",
      "tags", "accel", "qemu_binary", "launch_mode", "fetch_whole_package", "nbd_plugin",
      "nbdkit_binary", "qemu_img_binary", "vm_user_ids", "overlay_pool"};
  for (const auto& [key, value] : j.items()) {
    if (!kKeys.contains(key)) return InvalidArgumentError("host config: unknown key '" + key + "'");
  }
  HostConfig c;
  RETURN_IF_ERROR(RequireString(j, "portal_url", &c.portal_url, true));
  RETURN_IF_ERROR(RequireString(j, "kms_url", &c.kms_url, true));
  RETURN_IF_ERROR(RequireString(j, "ca_file", &c.ca_file, true));
  RETURN_IF_ERROR(RequireString(j, "cert_file", &c.cert_file, true));
  RETURN_IF_ERROR(RequireString(j, "key_file", &c.key_file, true));
  RETURN_IF_ERROR(RequireString(j, "tpm_tcti", &c.tpm_tcti, true));
  RETURN_IF_ERROR(RequireString(j, "state_dir", &c.state_dir, true));
  RETURN_IF_ERROR(RequireString(j, "image_store_dir", &c.image_store_dir, true));
  RETURN_IF_ERROR(RequireString(j, "accel", &c.accel, false));
  RETURN_IF_ERROR(RequireString(j, "qemu_binary", &c.qemu_binary, false));
  RETURN_IF_ERROR(RequireString(j, "launch_mode", &c.launch_mode, false));
  RETURN_IF_ERROR(RequireString(j, "nbd_plugin", &c.nbd_plugin, false));
  RETURN_IF_ERROR(RequireString(j, "nbdkit_binary", &c.nbdkit_binary, false));
  RETURN_IF_ERROR(RequireString(j, "qemu_img_binary", &c.qemu_img_binary, false));
  if (c.launch_mode != "stream" && c.launch_mode != "copy") {
    return InvalidArgumentError("host config: 'launch_mode' must be stream or copy");
  }
  if (j.contains("fetch_whole_package")) {
    if (!j["fetch_whole_package"].is_boolean()) {
      return InvalidArgumentError("host config: 'fetch_whole_package' must be true or false");
    }
    c.fetch_whole_package = j["fetch_whole_package"].get<bool>();
  }
  if (j.contains("overlay_pool")) {
    const json& v = j["overlay_pool"];
    if (!v.is_number_unsigned() || v.get<uint64_t>() > 16) {
      return InvalidArgumentError("host config: 'overlay_pool' must be 0..16");
    }
    c.overlay_pool = v.get<uint32_t>();
  }
  if (j.contains("vm_user_ids")) {
    const json& v = j["vm_user_ids"];
    static const char* kBad =
        "host config: 'vm_user_ids' must be {\"first\": 1..4294967294, \"count\": 0 or 2.., "
        "ending below 4294967295}";
    if (!v.is_object() || v.size() != 2 || !v.contains("first") || !v.contains("count") ||
        !v["first"].is_number_unsigned() || !v["count"].is_number_unsigned()) {
      return InvalidArgumentError(kBad);
    }
    const uint64_t first = v["first"].get<uint64_t>();
    const uint64_t count = v["count"].get<uint64_t>();
    if (count != 0 && (first == 0 || count < 2 || first + count > 0xffffffffull)) {
      return InvalidArgumentError(kBad);
    }
    c.vm_user_first_id = static_cast<uint32_t>(first);
    c.vm_user_count = static_cast<uint32_t>(count);
  }
  for (const char* key : {"portal_url", "kms_url"}) {
    if (!j[key].get_ref<const std::string&>().starts_with("https://")) {
      return InvalidArgumentError(std::string("host config: '") + key +
                                  "' must be an https:// url");
    }
  }
  if (c.accel != "auto" && c.accel != "kvm" && c.accel != "tcg") {
    return InvalidArgumentError("host config: 'accel' must be auto, kvm or tcg");
  }
  if (c.state_dir == c.image_store_dir) {
    return InvalidArgumentError("host config: 'state_dir' and 'image_store_dir' must differ");
  }
  if (j.contains("pcr_selection")) {
    const json& p = j["pcr_selection"];
    if (!p.is_array() || p.empty()) {
      return InvalidArgumentError("host config: 'pcr_selection' must be a non-empty array");
    }
    c.pcr_selection.clear();
    std::set<uint32_t> seen;
    for (const json& v : p) {
      if (!v.is_number_unsigned() || v.get<uint64_t>() > 23 ||
          !seen.insert(v.get<uint32_t>()).second) {
        return InvalidArgumentError("host config: 'pcr_selection' holds distinct PCRs 0..23");
      }
      c.pcr_selection.push_back(v.get<uint32_t>());
    }
    std::sort(c.pcr_selection.begin(), c.pcr_selection.end());
  }
  RETURN_IF_ERROR(ReadSeconds(j, "heartbeat_interval_seconds", &c.heartbeat_interval_seconds));
  RETURN_IF_ERROR(ReadSeconds(j, "reattest_interval_seconds", &c.reattest_interval_seconds));
  RETURN_IF_ERROR(ReadSeconds(j, "poll_interval_seconds", &c.poll_interval_seconds));
  if (j.contains("allow_plain_images")) {
    if (!j["allow_plain_images"].is_boolean()) {
      return InvalidArgumentError("host config: 'allow_plain_images' must be true or false");
    }
    c.allow_plain_images = j["allow_plain_images"].get<bool>();
  }
  if (j.contains("capacity")) {
    const json& cap = j["capacity"];
    HostCapacity detected = DetectCapacity();
    HostCapacity out = detected;
    if (!cap.is_object()) return InvalidArgumentError("host config: 'capacity' must be an object");
    for (const auto& [key, value] : cap.items()) {
      if (!value.is_number_unsigned() || value.get<uint64_t>() == 0 ||
          value.get<uint64_t>() > (uint64_t{1} << 32)) {
        return InvalidArgumentError("host config: capacity '" + key + "' must be a positive integer");
      }
      if (key == "vcpus") {
        out.vcpus = value.get<uint32_t>();
      } else if (key == "memory_mib") {
        out.memory_mib = value.get<uint64_t>();
      } else if (key == "slots") {
        out.slots = value.get<uint32_t>();
      } else {
        return InvalidArgumentError("host config: unknown capacity key '" + key + "'");
      }
    }
    if (!cap.contains("slots")) out.slots = out.vcpus;
    c.capacity = out;
  }
  if (j.contains("tags")) {
    if (!j["tags"].is_array()) return InvalidArgumentError("host config: 'tags' must be an array");
    for (const json& t : j["tags"]) {
      if (!t.is_string()) return InvalidArgumentError("host config: tags are strings");
      const std::string& s = t.get_ref<const std::string&>();
      size_t eq = s.find('=');
      if (eq == std::string::npos || eq == 0) {
        return InvalidArgumentError("host config: tag '" + s + "' is not key=value");
      }
      c.tags.push_back(s);
    }
  }
  return c;
}

StatusOr<HostConfig> LoadHostConfig(Env* env, const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(env, path));
  auto c = ParseHostConfig(text);
  if (!c.ok()) return c.status().WithPrefix(path);
  return c;
}

std::string HostConfigSkeleton(const std::string& root) {
  json j = {
      {"portal_url", "https://portal.example:8443"},
      {"kms_url", "https://kms.example:8444"},
      {"ca_file", root + "/identity/ca.pem"},
      {"cert_file", root + "/identity/host.crt"},
      {"key_file", root + "/identity/host.key"},
      {"tpm_tcti", "device:/dev/tpmrm0"},
      {"state_dir", root + "/state"},
      {"image_store_dir", root + "/images"},
      {"pcr_selection", {0, 1, 2, 3, 4, 5, 6, 7}},
      {"heartbeat_interval_seconds", 10},
      {"reattest_interval_seconds", 60},
      {"poll_interval_seconds", 2},
      {"allow_plain_images", false},
      {"tags", json::array()},
      {"accel", "auto"},
      {"qemu_binary", "qemu-system-x86_64"},
      {"launch_mode", "stream"},
      {"fetch_whole_package", false},
      {"nbd_plugin", ""},
      {"nbdkit_binary", "nbdkit"},
      {"qemu_img_binary", "qemu-img"},
      {"vm_user_ids", {{"first", 0x7A000000u}, {"count", 4096}}}};
  return j.dump(2) + "\n";
}

}  // namespace vmseal::host
