#include "host/internal/virtual_hardware.h"

#include <libxml/parser.h>
#include <libxml/tree.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>
#include <memory>
#include <string>

#include "ovf/package_format.h"

namespace vmseal::host::internal {
namespace {

struct DocDeleter {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};

std::string_view LocalName(const xmlNode* n) {
  return reinterpret_cast<const char*>(n->name);
}

std::string Text(const xmlNode* n) {
  xmlChar* c = xmlNodeGetContent(n);
  std::string s = c ? reinterpret_cast<const char*>(c) : "";
  xmlFree(c);
  size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

const xmlNode* FindChild(const xmlNode* parent, std::string_view name) {
  for (const xmlNode* c = parent->children; c; c = c->next) {
    if (c->type == XML_ELEMENT_NODE && LocalName(c) == name) return c;
  }
  return nullptr;
}

const xmlNode* FindDescendant(const xmlNode* node, std::string_view name) {
  for (const xmlNode* c = node->children; c; c = c->next) {
    if (c->type != XML_ELEMENT_NODE) continue;
    if (LocalName(c) == name) return c;
    if (const xmlNode* d = FindDescendant(c, name)) return d;
  }
  return nullptr;
}

StatusOr<uint64_t> ParseCount(const std::string& s) {
  if (s.empty() || s.size() > 12 || s.find_first_not_of("0123456789") != std::string::npos) {
    return InvalidArgumentError("descriptor: invalid VirtualQuantity '" + s.substr(0, 16) + "'");
  }
  return std::strtoull(s.c_str(), nullptr, 10);
}

// DSP0004 programmatic units as used by OVF tools.
StatusOr<uint64_t> MemoryUnitToMib(std::string units, uint64_t quantity) {
  std::string u;
  for (char c : units) if (c != ' ') u += c;
  if (u.empty() || u == "byte*2^20" || u == "MegaBytes" || u == "MB") return quantity;
  if (u == "byte*2^30" || u == "GigaBytes" || u == "GB") return quantity * 1024;
  if (u == "byte*2^10" || u == "KiloBytes" || u == "KB") return quantity / 1024;
  if (u == "byte") return quantity / (1024 * 1024);
  return InvalidArgumentError("descriptor: unknown memory AllocationUnits '" +
                              units.substr(0, 32) + "'");
}

// An attribute by local name, whatever its namespace ("" when absent).
std::string Attr(const xmlNode* n, std::string_view name) {
  for (const xmlAttr* a = n->properties; a; a = a->next) {
    if (reinterpret_cast<const char*>(a->name) != name) continue;
    xmlChar* v = xmlNodeListGetString(n->doc, a->children, 1);
    std::string s = v ? reinterpret_cast<const char*>(v) : "";
    xmlFree(v);
    return s;
  }
  return "";
}

// A small non-negative integer, or -1.
int64_t SmallNumber(const std::string& s) {
  if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos) {
    return -1;
  }
  return std::strtoll(s.c_str(), nullptr, 10);
}

constexpr std::string_view kDiskDrive = "17";
constexpr int64_t kMaxItems = 256;

// The disks' file ids in attach order (VirtualHardware::disk_file_ids).
Status ReadDiskOrder(const xmlNode* root, const xmlNode* hardware, VirtualHardware* hw) {
  std::map<std::string, std::string> disk_to_file;
  std::set<std::string> files;
  if (const xmlNode* refs = FindChild(root, "References")) {
    for (const xmlNode* f = refs->children; f; f = f->next) {
      if (f->type == XML_ELEMENT_NODE && LocalName(f) == "File") files.insert(Attr(f, "id"));
    }
  }
  if (const xmlNode* disks = FindChild(root, "DiskSection")) {
    for (const xmlNode* d = disks->children; d; d = d->next) {
      if (d->type == XML_ELEMENT_NODE && LocalName(d) == "Disk") {
        disk_to_file[Attr(d, "diskId")] = Attr(d, "fileRef");
      }
    }
  }
  // Controllers (any Item a disk names as Parent) rank by document order.
  struct Drive {
    std::string file_id, instance_id, parent;
    int64_t address = -1;
    size_t position = 0;
  };
  std::vector<Drive> drives;
  std::vector<std::string> instance_order;
  size_t position = 0;
  for (const xmlNode* item = hardware->children; item; item = item->next) {
    if (item->type != XML_ELEMENT_NODE || LocalName(item) != "Item") continue;
    if (++position > kMaxItems) return InvalidArgumentError("descriptor: too many Items");
    const xmlNode* id = FindChild(item, "InstanceID");
    instance_order.push_back(id ? Text(id) : "");
    const xmlNode* type = FindChild(item, "ResourceType");
    if (type == nullptr || Text(type) != kDiskDrive) continue;
    const xmlNode* resource = FindChild(item, "HostResource");
    if (resource == nullptr) continue;  // an empty drive
    const std::string host = Text(resource);
    std::string file_id;
    for (std::string_view prefix : {"ovf:/disk/", "/disk/"}) {
      if (host.starts_with(prefix)) {
        auto it = disk_to_file.find(host.substr(prefix.size()));
        if (it == disk_to_file.end()) {
          return InvalidArgumentError("descriptor: disk Item names no Disk: '" +
                                      host.substr(0, 64) + "'");
        }
        file_id = it->second;
      }
    }
    for (std::string_view prefix : {"ovf:/file/", "/file/"}) {
      if (host.starts_with(prefix)) file_id = host.substr(prefix.size());
    }
    if (file_id.empty() || !files.contains(file_id)) {
      return InvalidArgumentError("descriptor: disk Item names no file of References: '" +
                                  host.substr(0, 64) + "'");
    }
    Drive d;
    d.file_id = file_id;
    d.instance_id = instance_order.back();
    const xmlNode* parent = FindChild(item, "Parent");
    d.parent = parent ? Text(parent) : "";
    const xmlNode* address = FindChild(item, "AddressOnParent");
    d.address = address ? SmallNumber(Text(address)) : -1;
    d.position = position;
    drives.push_back(std::move(d));
  }
  auto rank = [&](const std::string& parent) -> size_t {
    for (size_t i = 0; i < instance_order.size(); ++i) {
      if (!parent.empty() && instance_order[i] == parent) return i;
    }
    return instance_order.size();
  };
  std::stable_sort(drives.begin(), drives.end(), [&](const Drive& a, const Drive& b) {
    const size_t ra = rank(a.parent), rb = rank(b.parent);
    if (ra != rb) return ra < rb;
    // A drive without an address goes after the addressed ones.
    const uint64_t aa = static_cast<uint64_t>(a.address), ab = static_cast<uint64_t>(b.address);
    if (aa != ab) return aa < ab;
    return a.position < b.position;
  });
  std::set<std::string> seen;
  for (const Drive& d : drives) {
    if (!seen.insert(d.file_id).second) {
      return InvalidArgumentError("descriptor: two disk Items on file '" + d.file_id + "'");
    }
  }
  // vmw:BootOrderSection (VMware's exports) names the boot disk's Item. A
  // sealed descriptor carries it inside the VirtualHardwareSection, where
  // OVF 2 allows a vendor element (docs/format/package.md §2.2); an export
  // has it directly in the VirtualSystem.
  const xmlNode* system = FindDescendant(root, "VirtualSystem");
  std::vector<const xmlNode*> candidates;
  for (const xmlNode* s = system ? system->children : nullptr; s; s = s->next) {
    if (s->type != XML_ELEMENT_NODE) continue;
    candidates.push_back(s);
    if (LocalName(s) == "VirtualHardwareSection") {
      for (const xmlNode* c = s->children; c; c = c->next) {
        if (c->type == XML_ELEMENT_NODE) candidates.push_back(c);
      }
    }
  }
  for (const xmlNode* s : candidates) {
    if (LocalName(s) != "BootOrderSection") continue;
    if (Attr(s, "type") != "disk") continue;
    const std::string instance = Attr(s, "instanceId");
    auto it = std::find_if(drives.begin(), drives.end(),
                           [&](const Drive& d) { return d.instance_id == instance; });
    if (it == drives.end()) {
      // Named as the descriptor spells it, prefix and all (vmw:BootOrderSection).
      std::string qualified = "BootOrderSection";
      if (s->ns != nullptr && s->ns->prefix != nullptr) {
        qualified = reinterpret_cast<const char*>(s->ns->prefix) + (":" + qualified);
      }
      return InvalidArgumentError("descriptor: " + qualified.substr(0, 64) +
                                  " names no disk Item (instanceId '" + instance.substr(0, 32) +
                                  "'; expected the InstanceID of a disk drive Item)");
    }
    std::rotate(drives.begin(), it, it + 1);
    hw->boot_named = true;
    break;  // the first disk entry is the boot disk
  }
  for (const Drive& d : drives) hw->disk_file_ids.push_back(d.file_id);
  return OkStatus();
}

// The section's vmseal:Platform (package.md §2.4), by namespace, not prefix.
Status ReadPlatform(const xmlNode* section, VirtualHardware* hw) {
  const xmlNode* found = nullptr;
  for (const xmlNode* c = section->children; c; c = c->next) {
    if (c->type != XML_ELEMENT_NODE || LocalName(c) != ovf::kPlatformElement) continue;
    if (c->ns == nullptr || c->ns->href == nullptr ||
        reinterpret_cast<const char*>(c->ns->href) != ovf::kVmsealNamespace) {
      continue;
    }
    if (found != nullptr) return InvalidArgumentError("descriptor: two vmseal:Platform elements");
    found = c;
  }
  if (found == nullptr) return OkStatus();
  const std::string fw = Attr(found, "firmware"), sb = Attr(found, "secureBoot"),
                    tpm = Attr(found, "tpm");
  if ((fw != "bios" && fw != "efi") || (sb != "true" && sb != "false") ||
      (tpm != "none" && tpm != "2.0")) {
    return InvalidArgumentError("descriptor: vmseal:Platform firmware=\"" + fw.substr(0, 16) +
                                "\" secureBoot=\"" + sb.substr(0, 16) + "\" tpm=\"" +
                                tpm.substr(0, 16) +
                                "\" (expected firmware bios|efi, secureBoot true|false, tpm "
                                "none|2.0)");
  }
  hw->efi = fw == "efi";
  hw->secure_boot = sb == "true";
  hw->tpm = tpm == "2.0";
  if (hw->secure_boot && !hw->efi) {
    return InvalidArgumentError("descriptor: vmseal:Platform asks for Secure Boot without EFI");
  }
  return OkStatus();
}

}  // namespace

StatusOr<VirtualHardware> ReadVirtualHardware(std::string_view descriptor_xml) {
  if (descriptor_xml.find("<!DOCTYPE") != std::string_view::npos) {
    return InvalidArgumentError("descriptor: DOCTYPE not allowed");
  }
  std::unique_ptr<xmlDoc, DocDeleter> doc(xmlReadMemory(
      descriptor_xml.data(), static_cast<int>(descriptor_xml.size()), "descriptor.ovf",
      nullptr, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
  if (!doc) return InvalidArgumentError("descriptor: not well-formed XML");
  VirtualHardware hw;
  const xmlNode* root = xmlDocGetRootElement(doc.get());
  const xmlNode* section = root ? FindDescendant(root, "VirtualHardwareSection") : nullptr;
  if (section == nullptr) return hw;
  RETURN_IF_ERROR(ReadDiskOrder(root, section, &hw));
  RETURN_IF_ERROR(ReadPlatform(section, &hw));
  for (const xmlNode* item = section->children; item; item = item->next) {
    if (item->type != XML_ELEMENT_NODE || LocalName(item) != "Item") continue;
    const xmlNode* type = FindChild(item, "ResourceType");
    const xmlNode* qty = FindChild(item, "VirtualQuantity");
    if (type == nullptr || qty == nullptr) continue;
    std::string t = Text(type);
    if (t == "3") {
      ASSIGN_OR_RETURN(uint64_t n, ParseCount(Text(qty)));
      if (n == 0 || n > kMaxCpus) return InvalidArgumentError("descriptor: CPU count out of range");
      hw.cpus = static_cast<uint32_t>(n);
    } else if (t == "4") {
      ASSIGN_OR_RETURN(uint64_t n, ParseCount(Text(qty)));
      const xmlNode* units = FindChild(item, "AllocationUnits");
      ASSIGN_OR_RETURN(uint64_t mib, MemoryUnitToMib(units ? Text(units) : "", n));
      if (mib == 0 || mib > kMaxMemoryMib) {
        return InvalidArgumentError("descriptor: memory size out of range");
      }
      hw.memory_mib = mib;
    }
  }
  return hw;
}

}  // namespace vmseal::host::internal
