#include "ovf/ovirt_dialect.h"

#include <libxml/parser.h>
#include <libxml/xmlerror.h>

#include <charconv>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "ovf/package_format.h"
#include "ovf/internal/xml_escape.h"

namespace vmseal::ovf {
namespace {

struct DocDeleter {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};
using DocPtr = std::unique_ptr<xmlDoc, DocDeleter>;

constexpr std::string_view kXsiNamespace = "http://www.w3.org/2001/XMLSchema-instance";

void IgnoreXmlError(void*, const char*, ...) {}

// The same parser rules as Descriptor::Parse: no DOCTYPE, entities or
// network.
DocPtr ParseXml(std::string_view xml) {
  if (xml.size() > kMaxDescriptorBytes || xml.find("<!DOCTYPE") != std::string_view::npos ||
      xml.find("<!ENTITY") != std::string_view::npos) {
    return nullptr;
  }
  xmlSetGenericErrorFunc(nullptr, IgnoreXmlError);
  xmlParserCtxtPtr ctxt = xmlNewParserCtxt();
  if (ctxt == nullptr) return nullptr;
  DocPtr doc(xmlCtxtReadMemory(ctxt, xml.data(), static_cast<int>(xml.size()), "descriptor.ovf",
                               nullptr,
                               XML_PARSE_NONET | XML_PARSE_NOBLANKS | XML_PARSE_NOERROR |
                                   XML_PARSE_NOWARNING | XML_PARSE_NOCDATA));
  xmlFreeParserCtxt(ctxt);
  if (doc != nullptr && (doc->intSubset != nullptr || doc->extSubset != nullptr)) return nullptr;
  return doc;
}

std::string_view NsHref(const xmlNode* n) {
  return n->ns != nullptr && n->ns->href != nullptr
             ? std::string_view(reinterpret_cast<const char*>(n->ns->href))
             : std::string_view();
}

std::string_view Local(const xmlNode* n) { return reinterpret_cast<const char*>(n->name); }

bool IsElement(const xmlNode* n) { return n != nullptr && n->type == XML_ELEMENT_NODE; }

// oVirt writes everything below the root unqualified.
bool Unqualified(const xmlNode* n, std::string_view name) {
  return IsElement(n) && n->ns == nullptr && Local(n) == name;
}

std::optional<std::string> Attr(const xmlNode* n, std::string_view ns, const char* name) {
  xmlChar* v = xmlGetNsProp(n, reinterpret_cast<const xmlChar*>(name),
                            ns.empty() ? nullptr : reinterpret_cast<const xmlChar*>(ns.data()));
  if (v == nullptr) return std::nullopt;
  std::string s(reinterpret_cast<const char*>(v));
  xmlFree(v);
  return s;
}

std::optional<std::string> OvfAttr(const xmlNode* n, const char* name) {
  return Attr(n, kOvirtEnvelopeNamespace, name);
}

std::string Text(const xmlNode* n) {
  xmlChar* c = xmlNodeGetContent(n);
  if (c == nullptr) return "";
  std::string s(reinterpret_cast<const char*>(c));
  xmlFree(c);
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

using internal::XmlEscape;

// At most 100 bytes of untrusted text in a message.
std::string Quote(std::string_view s) {
  std::string out(1, '"');
  out.append(s.substr(0, 100));
  out.push_back('"');
  return out;
}

std::optional<uint64_t> ParseUint(std::string_view s) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

// What a section is, in either flavour: the element's name (ovirt) or the
// xsi:type of a `Section`/`Content` without its prefix and "_Type" suffix
// (export domain). "" for anything else.
std::string Kind(const xmlNode* n) {
  if (!IsElement(n) || n->ns != nullptr) return "";
  const std::string_view local = Local(n);
  if (local == "Section" || local == "Content") {
    std::string type = Attr(n, kXsiNamespace, "type").value_or("");
    type = type.substr(type.find(':') + 1);
    if (type.ends_with("_Type")) type.resize(type.size() - 5);
    return type;
  }
  if (local.ends_with("Section") || local == "VirtualSystem" ||
      local == "VirtualSystemCollection") {
    return std::string(local);
  }
  return "";
}

// How an element is named in messages: its name, and xsi:type for the
// export domain's generic ones.
std::string Describe(const xmlNode* n) {
  std::string name(Local(n));
  if (auto type = Attr(n, kXsiNamespace, "type")) name += " xsi:type=" + Quote(*type);
  return name;
}

// The text of the rasd: child `name` of an Item, or "".
std::string Rasd(const xmlNode* item, std::string_view name) {
  for (xmlNode* c = item->children; c != nullptr; c = c->next) {
    if (IsElement(c) && NsHref(c) == kRasdNamespace && Local(c) == name) return Text(c);
  }
  return "";
}

// The text of an unqualified child of `parent`, or "".
std::string Plain(const xmlNode* parent, std::string_view name) {
  for (xmlNode* c = parent->children; c != nullptr; c = c->next) {
    if (Unqualified(c, name)) return Text(c);
  }
  return "";
}

struct OvirtDisk {
  std::string disk_id;
  std::string file_ref;
  uint64_t capacity = 0;
  std::string format_uri;
};

struct OvirtFile {
  std::string id;
  std::string href;
  std::optional<uint64_t> size;
};

// One rasd element of an output Item; Items list them in the CIM schema's
// (alphabetical) order.
using RasdFields = std::map<std::string, std::string>;

std::string ItemXml(const RasdFields& f) {
  std::string x = "      <Item>\n";
  for (const auto& [name, value] : f) {
    x += "        <rasd:" + name + ">" + XmlEscape(value) + "</rasd:" + name + ">\n";
  }
  return x + "      </Item>\n";
}

// oVirt's NIC models (VmInterfaceType): 1 rtl8139, 2 e1000, 3 virtio (pv).
std::string NicModel(std::string_view subtype) {
  if (subtype == "1") return "rtl8139";
  if (subtype == "2") return "e1000";
  if (subtype == "3") return "virtio-net";
  return std::string(subtype.substr(0, 64));
}

}  // namespace

bool IsOvirtDescriptor(std::string_view xml) {
  DocPtr doc = ParseXml(xml);
  if (doc == nullptr) return false;
  const xmlNode* root = xmlDocGetRootElement(doc.get());
  return IsElement(root) && Local(root) == "Envelope" && NsHref(root) == kOvirtEnvelopeNamespace;
}

StatusOr<std::string> ConvertOvirtDescriptor(std::string_view xml,
                                             std::vector<std::string>* notes) {
  auto note = [&](std::string s) {
    if (notes != nullptr) notes->push_back("oVirt: " + std::move(s));
  };
  DocPtr doc = ParseXml(xml);
  if (doc == nullptr) return InvalidArgumentError("oVirt descriptor is not well-formed XML");
  const xmlNode* root = xmlDocGetRootElement(doc.get());
  if (!IsElement(root) || Local(root) != "Envelope" ||
      NsHref(root) != kOvirtEnvelopeNamespace) {
    return InvalidArgumentError("descriptor root is not oVirt's Envelope");
  }

  // The envelope: References, sections, one VM.
  std::vector<OvirtFile> files;
  std::vector<OvirtDisk> disks;
  std::vector<std::pair<std::string, std::string>> networks;  // name, description
  const xmlNode* vm = nullptr;
  bool have_refs = false;
  for (const xmlNode* c = root->children; c != nullptr; c = c->next) {
    if (!IsElement(c)) continue;
    const std::string kind = Kind(c);
    if (Unqualified(c, "References")) {
      have_refs = true;
      for (const xmlNode* f = c->children; f != nullptr; f = f->next) {
        if (!IsElement(f)) continue;
        if (!Unqualified(f, "File")) {
          return InvalidArgumentError("oVirt References holds " + Describe(f) + ", not File");
        }
        OvirtFile file;
        auto id = OvfAttr(f, "id");
        auto href = OvfAttr(f, "href");
        if (!id || !href) return InvalidArgumentError("oVirt File without ovf:id or ovf:href");
        file.id = *id;
        file.href = *href;
        if (auto size = OvfAttr(f, "size"); size && !size->empty()) {
          file.size = ParseUint(*size);
          if (!file.size) return InvalidArgumentError("oVirt File " + Quote(*href) +
                                                      " has an invalid ovf:size");
        }
        files.push_back(file);
      }
    } else if (kind == "DiskSection") {
      for (const xmlNode* d = c->children; d != nullptr; d = d->next) {
        if (!IsElement(d) || Unqualified(d, "Info")) continue;
        if (!Unqualified(d, "Disk")) {
          return InvalidArgumentError("oVirt DiskSection holds " + Describe(d) + ", not Disk");
        }
        OvirtDisk disk;
        disk.disk_id = OvfAttr(d, "diskId").value_or("");
        disk.file_ref = OvfAttr(d, "fileRef").value_or("");
        if (disk.disk_id.empty() || disk.file_ref.empty()) {
          return InvalidArgumentError("oVirt Disk without ovf:diskId or ovf:fileRef");
        }
        const std::string what = "oVirt Disk " + Quote(disk.disk_id);
        if (auto parent = OvfAttr(d, "parentRef"); parent && !parent->empty() &&
                                                   *parent != "00000000-0000-0000-0000-000000000000") {
          return UnimplementedError(what + " has ovf:parentRef=" + Quote(*parent) +
                                    ": it is a snapshot layer over another volume; export the "
                                    "VM with its snapshots collapsed");
        }
        const std::string format = OvfAttr(d, "volume-format").value_or("");
        if (format == "RAW") {
          disk.format_uri = std::string(kRawFormatUri);
        } else if (format == "COW") {
          disk.format_uri = std::string(kQcow2FormatUri);
        } else {
          return UnimplementedError(what + " has ovf:volume-format=" + Quote(format) +
                                    " (RAW or COW are supported)");
        }
        // ovf:size is whole GiB rounded up; ovf:capacity is the exact size.
        auto capacity = ParseUint(OvfAttr(d, "capacity").value_or(""));
        if (!capacity || *capacity == 0) {
          return InvalidArgumentError(what + " has no valid ovf:capacity (its size in bytes; "
                                      "ovf:size is in whole GiB and not exact)");
        }
        disk.capacity = *capacity;
        disks.push_back(disk);
      }
    } else if (kind == "NetworkSection") {
      for (const xmlNode* n = c->children; n != nullptr; n = n->next) {
        if (!Unqualified(n, "Network")) continue;
        auto name = OvfAttr(n, "name");
        if (!name || name->empty()) return InvalidArgumentError("oVirt Network without ovf:name");
        networks.emplace_back(*name, Plain(n, "Description"));
      }
    } else if (kind == "VirtualSystem") {
      if (vm != nullptr) {
        return UnimplementedError("oVirt descriptor has more than one VirtualSystem (" +
                                  Describe(c) + "): seal one VM per package");
      }
      vm = c;
    } else if (kind == "VirtualSystemCollection") {
      return UnimplementedError("oVirt " + Describe(c) + ": seal one VM per package");
    } else {
      const std::string required = OvfAttr(c, "required").value_or("true");
      if (required != "false") {
        return UnimplementedError("oVirt envelope holds the required element " + Describe(c) +
                                  ", which seal does not know");
      }
      note("dropped " + Describe(c) + " (not required)");
    }
  }
  if (!have_refs) return InvalidArgumentError("oVirt descriptor has no References");
  if (vm == nullptr) return InvalidArgumentError("oVirt descriptor has no VirtualSystem");

  // Files and disks must match one to one.
  std::map<std::string, const OvirtFile*> file_by_href;
  std::set<std::string> ids;
  for (const OvirtFile& f : files) {
    if (!file_by_href.emplace(f.href, &f).second || !ids.insert(f.id).second) {
      return InvalidArgumentError("oVirt References lists " + Quote(f.href) + " twice");
    }
  }
  // oVirt's fileRef is the File's href ("image/volume"), not its id.
  std::set<std::string> used;
  for (OvirtDisk& d : disks) {
    auto it = file_by_href.find(d.file_ref);
    if (it == file_by_href.end()) {
      return InvalidArgumentError("oVirt Disk " + Quote(d.disk_id) + " has ovf:fileRef=" +
                                  Quote(d.file_ref) + ", which no File's ovf:href names");
    }
    if (!used.insert(d.file_ref).second) {
      return InvalidArgumentError("oVirt File " + Quote(d.file_ref) + " backs two Disks");
    }
    d.file_ref = it->second->id;
  }
  for (const OvirtFile& f : files) {
    if (!used.count(f.href)) {
      return InvalidArgumentError("oVirt File " + Quote(f.href) + " is no Disk's volume");
    }
  }

  // The VM.
  std::string name = Plain(vm, "Name");
  const std::string vm_id = OvfAttr(vm, "id").value_or("vm");
  if (name.empty()) name = vm_id;
  std::string info = Plain(vm, "Description");
  if (info.empty()) info = "A virtual machine exported by oVirt";
  bool efi = false, secure_boot = false, tpm = false;
  if (std::string bios = Plain(vm, "BiosType"); !bios.empty()) {
    // virt-v2v's and the engine's BiosType (BiosType.java plus one): 0
    // i440fx + SeaBIOS, 1 q35 + SeaBIOS, 2 q35 + UEFI, 3 q35 + UEFI with
    // Secure Boot. The host picks its own machine type.
    if (bios == "2") {
      efi = true;
    } else if (bios == "3") {
      efi = secure_boot = true;
    } else if (bios != "0" && bios != "1") {
      return InvalidArgumentError("oVirt BiosType " + Quote(bios) +
                                  " is none of 0, 1 (BIOS), 2 (UEFI), 3 (UEFI, Secure Boot)");
    }
  }
  const std::string os_id = "0";  // CIM "Unknown": oVirt's ovf:id here is the VM's UUID
  std::string os_description;
  std::set<std::string> dropped_settings;
  const xmlNode* hw = nullptr;
  for (const xmlNode* c = vm->children; c != nullptr; c = c->next) {
    if (!IsElement(c)) continue;
    const std::string kind = Kind(c);
    if (kind == "VirtualHardwareSection") {
      if (hw != nullptr) {
        return InvalidArgumentError("oVirt VirtualSystem has two VirtualHardwareSections");
      }
      hw = c;
    } else if (kind == "OperatingSystemSection") {
      os_description = Plain(c, "Description");
      if (os_description.empty()) os_description = Plain(c, "Info");
    } else if (kind.empty()) {
      // Name, Description, BiosType are used; the rest are oVirt's own
      // settings (TemplateId, VmType, Origin, ...).
      const std::string local(Local(c));
      if (local != "Name" && local != "Description" && local != "BiosType") {
        dropped_settings.insert(local.substr(0, 40));
      }
    } else {
      const std::string required = OvfAttr(c, "required").value_or("true");
      if (required != "false" && kind != "SnapshotsSection") {
        return UnimplementedError("oVirt VirtualSystem holds the required section " +
                                  Describe(c) + ", which seal does not know");
      }
      note("dropped " + Describe(c) + (kind == "SnapshotsSection" ? " (snapshot metadata)" : ""));
    }
  }
  if (hw == nullptr) {
    return InvalidArgumentError("oVirt VirtualSystem has no VirtualHardwareSection");
  }
  if (!dropped_settings.empty()) {
    std::string list;
    for (const std::string& s : dropped_settings) list += (list.empty() ? "" : ", ") + s;
    note("dropped oVirt's VM settings, which OVF has no place for: " + list);
  }

  // The hardware.
  std::string items;
  std::string hw_info = Plain(hw, "Info");
  if (hw_info.empty()) hw_info = "Virtual hardware requirements";
  std::map<std::string, std::string> disk_by_file_id;
  for (const OvirtDisk& d : disks) disk_by_file_id[d.file_ref] = d.disk_id;
  std::set<std::string> instance_ids;
  std::set<std::string> disks_in_hw;
  bool have_cpu = false, have_memory = false;
  for (const xmlNode* item = hw->children; item != nullptr; item = item->next) {
    if (!IsElement(item) || Unqualified(item, "Info")) continue;
    if (!Unqualified(item, "Item")) {
      return UnimplementedError("oVirt VirtualHardwareSection holds " + Describe(item) +
                                ", which seal does not know");
    }
    const std::string type = Rasd(item, "ResourceType");
    std::string caption = Rasd(item, "Caption");
    std::string instance = Rasd(item, "InstanceId");
    if (instance.empty()) instance = Rasd(item, "InstanceID");
    if (instance.empty()) {
      return InvalidArgumentError("oVirt Item " + Quote(caption) + " has no rasd:InstanceId");
    }
    if (!instance_ids.insert(instance).second) {
      return InvalidArgumentError("oVirt Items share rasd:InstanceId " + Quote(instance));
    }
    const std::string device_type = Plain(item, "Type");
    if (device_type == "tpm") {
      // The engine's vTPM device (oVirt emulates TPM 2.0).
      tpm = true;
      continue;
    }
    RasdFields f;
    f["InstanceID"] = instance;
    f["ResourceType"] = type;
    if (type == "3") {
      // virt-v2v writes the topology, not a count.
      auto product = [&](const char* n) -> std::optional<uint64_t> {
        const std::string v = Rasd(item, n);
        return v.empty() ? std::optional<uint64_t>(1) : ParseUint(v);
      };
      auto sockets = product("num_of_sockets");
      auto cores = product("cpu_per_socket");
      auto threads = product("threads_per_cpu");
      std::optional<uint64_t> count;
      if (sockets && cores && threads && *sockets > 0 && *cores > 0 && *threads > 0 &&
          *sockets <= 4096 && *cores <= 4096 && *threads <= 4096) {
        count = *sockets * *cores * *threads;
      }
      if (const std::string q = Rasd(item, "VirtualQuantity"); !q.empty()) count = ParseUint(q);
      if (!count || *count == 0 || *count > 4096) {
        return InvalidArgumentError("oVirt CPU Item " + Quote(instance) +
                                    " has no valid rasd:num_of_sockets x rasd:cpu_per_socket "
                                    "x rasd:threads_per_cpu");
      }
      f["Description"] = "Number of virtual CPUs";
      f["ElementName"] = std::to_string(*count) + " virtual CPUs";
      f["VirtualQuantity"] = std::to_string(*count);
      have_cpu = true;
    } else if (type == "4") {
      const std::string units = Rasd(item, "AllocationUnits");
      auto mib = ParseUint(Rasd(item, "VirtualQuantity"));
      if (units != "MegaBytes" && units != "byte * 2^20") {
        return InvalidArgumentError("oVirt memory Item has rasd:AllocationUnits " + Quote(units) +
                                    " (MegaBytes expected)");
      }
      if (!mib || *mib == 0) {
        return InvalidArgumentError("oVirt memory Item has no valid rasd:VirtualQuantity");
      }
      f["AllocationUnits"] = "byte * 2^20";
      f["Description"] = "Memory size";
      f["ElementName"] = std::to_string(*mib) + " MiB of memory";
      f["VirtualQuantity"] = std::to_string(*mib);
      have_memory = true;
    } else if (type == "17") {
      // rasd:HostResource is the volume's "image/volume" path.
      const std::string resource = Rasd(item, "HostResource");
      auto file = file_by_href.find(resource);
      if (file == file_by_href.end()) {
        return InvalidArgumentError("oVirt disk Item " + Quote(caption) +
                                    " has rasd:HostResource " + Quote(resource) +
                                    ", which no File's ovf:href names");
      }
      const std::string& disk_id = disk_by_file_id[file->second->id];
      if (!disks_in_hw.insert(disk_id).second) {
        return InvalidArgumentError("oVirt disk " + Quote(resource) + " is attached twice");
      }
      f["ElementName"] = caption.empty() ? "Drive" : caption;
      f["HostResource"] = "ovf:/disk/" + disk_id;
    } else if (type == "10") {
      const std::string connection = Rasd(item, "Connection");
      f["AutomaticAllocation"] = "true";
      if (!connection.empty()) f["Connection"] = connection;
      f["ElementName"] = caption.empty() ? "Ethernet adapter" : caption;
      if (const std::string mac = Rasd(item, "MACAddress"); !mac.empty()) f["Address"] = mac;
      if (const std::string sub = Rasd(item, "ResourceSubType"); !sub.empty()) {
        f["ResourceSubType"] = NicModel(sub);
      }
    } else {
      // USB controller (23), video (20; 32768 in the ovirt flavour), RNG,
      // balloon and sound (0): devices the host gives every VM or none.
      std::string what = caption.empty() ? device_type : caption;
      note("dropped Item " + Quote(what) + " (rasd:ResourceType " + Quote(type) +
           "): the host chooses its own devices");
      continue;
    }
    items += ItemXml(f);
  }
  if (!have_cpu) return InvalidArgumentError("oVirt VirtualHardwareSection has no CPU Item");
  if (!have_memory) return InvalidArgumentError("oVirt VirtualHardwareSection has no memory Item");
  for (const OvirtDisk& d : disks) {
    if (!disks_in_hw.count(d.disk_id)) {
      return InvalidArgumentError("oVirt Disk " + Quote(d.disk_id) +
                                  " has no disk Item in the VirtualHardwareSection");
    }
  }

  // The OVF 2.0 descriptor, in the order DSP8023 asks for.
  std::string x;
  x += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  x += "<Envelope xmlns=\"" + std::string(kOvf2Namespace) + "\" xmlns:ovf=\"" +
       std::string(kOvf2Namespace) + "\" xmlns:rasd=\"" + std::string(kRasdNamespace) +
       "\" xmlns:vssd=\"" + std::string(kVssdNamespace) + "\" ovf:version=\"2.0\">\n";
  x += "  <References>\n";
  for (const OvirtFile& f : files) {
    x += "    <File ovf:id=\"" + XmlEscape(f.id) + "\" ovf:href=\"" + XmlEscape(f.href) + "\"" +
         (f.size ? " ovf:size=\"" + std::to_string(*f.size) + "\"" : "") + "/>\n";
  }
  x += "  </References>\n";
  x += "  <DiskSection>\n    <Info>Virtual disks</Info>\n";
  for (const OvirtDisk& d : disks) {
    x += "    <Disk ovf:diskId=\"" + XmlEscape(d.disk_id) + "\" ovf:fileRef=\"" + XmlEscape(d.file_ref) +
         "\" ovf:capacity=\"" + std::to_string(d.capacity) + "\" ovf:format=\"" +
         XmlEscape(d.format_uri) + "\"/>\n";
  }
  x += "  </DiskSection>\n";
  if (!networks.empty()) {
    x += "  <NetworkSection>\n    <Info>Logical networks</Info>\n";
    for (const auto& [net, description] : networks) {
      x += "    <Network ovf:name=\"" + XmlEscape(net) + "\">\n      <Description>" +
           XmlEscape(description.empty() ? net : description) + "</Description>\n    </Network>\n";
    }
    x += "  </NetworkSection>\n";
  }
  x += "  <VirtualSystem ovf:id=\"" + XmlEscape(vm_id) + "\">\n";
  x += "    <Info>" + XmlEscape(info) + "</Info>\n";
  x += "    <Name>" + XmlEscape(name) + "</Name>\n";
  if (!os_description.empty()) {
    x += "    <OperatingSystemSection ovf:id=\"" + os_id + "\" ovf:required=\"false\">\n"
         "      <Info>The guest operating system</Info>\n"
         "      <Description>" + XmlEscape(os_description) + "</Description>\n"
         "    </OperatingSystemSection>\n";
  }
  x += "    <VirtualHardwareSection>\n      <Info>" + XmlEscape(hw_info) + "</Info>\n";
  x += items;
  if (efi || tpm) {
    note(std::string("firmware ") + (efi ? "efi" : "bios") + ", Secure Boot " +
         (secure_boot ? "on" : "off") + ", TPM " + (tpm ? "2.0" : "none") +
         " from BiosType and the engine's tpm device");
    x += "      <vmseal:Platform xmlns:vmseal=\"" + std::string(kVmsealNamespace) +
         "\" ovf:required=\"false\" firmware=\"" + (efi ? "efi" : "bios") + "\" secureBoot=\"" +
         (secure_boot ? "true" : "false") + "\" tpm=\"" + (tpm ? "2.0" : "none") + "\"/>\n";
  }
  x += "    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n";
  note("mapped oVirt's dialect (envelope namespace " + std::string(kOvirtEnvelopeNamespace) +
       ") to OVF 2.0");
  return x;
}

}  // namespace vmseal::ovf
