#include "ovf/descriptor.h"

#include <libxml/parser.h>
#include <libxml/xmlerror.h>
#include <libxml/xmlsave.h>

#include <charconv>
#include <functional>
#include <cstring>
#include <set>

#include "crypto/key_wrap.h"
#include "crypto/primitives.h"
#include "ovf/package_format.h"
#include "ovf/tar.h"
#include "ovf/internal/xml_escape.h"

namespace vmseal::ovf {
namespace {

const xmlChar* X(std::string_view s) { return reinterpret_cast<const xmlChar*>(s.data()); }
const xmlChar* X(const char* s) { return reinterpret_cast<const xmlChar*>(s); }

// Silences libxml2's default printing to stderr; errors are read from the
// parser context instead.
void IgnoreXmlError(void*, const char*, ...) {}

bool NsIs(const xmlNs* ns, std::string_view href) {
  return ns != nullptr && ns->href != nullptr &&
         std::string_view(reinterpret_cast<const char*>(ns->href)) == href;
}

bool Is(const xmlNode* n, std::string_view ns, const char* name) {
  return n != nullptr && n->type == XML_ELEMENT_NODE && NsIs(n->ns, ns) &&
         std::strcmp(reinterpret_cast<const char*>(n->name), name) == 0;
}

xmlNode* FirstChild(const xmlNode* parent, std::string_view ns, const char* name) {
  for (xmlNode* c = parent->children; c != nullptr; c = c->next) {
    if (Is(c, ns, name)) return c;
  }
  return nullptr;
}

std::vector<xmlNode*> Children(const xmlNode* parent, std::string_view ns, const char* name) {
  std::vector<xmlNode*> out;
  for (xmlNode* c = parent->children; c != nullptr; c = c->next) {
    if (Is(c, ns, name)) out.push_back(c);
  }
  return out;
}

// An attribute in namespace `ns` (empty: no namespace), if present.
std::optional<std::string> Attr(const xmlNode* n, std::string_view ns, const char* name) {
  xmlChar* v = ns.empty() ? xmlGetNoNsProp(n, X(name)) : xmlGetNsProp(n, X(name), X(ns));
  if (v == nullptr) return std::nullopt;
  std::string s(reinterpret_cast<const char*>(v));
  xmlFree(v);
  return s;
}

std::string Text(const xmlNode* n) {
  xmlChar* v = xmlNodeGetContent(n);
  if (v == nullptr) return "";
  std::string s(reinterpret_cast<const char*>(v));
  xmlFree(v);
  size_t b = s.find_first_not_of(" \t\r\n");
  size_t e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

template <typename T>
std::optional<T> ParseUint(std::string_view s) {
  T v = 0;
  if (s.empty()) return std::nullopt;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

using internal::XmlEscape;

void ForEachElement(xmlNode* n, const std::function<void(xmlNode*)>& fn) {
  for (; n != nullptr; n = n->next) {
    if (n->type != XML_ELEMENT_NODE) continue;
    fn(n);
    ForEachElement(n->children, fn);
  }
}

void AppendU32(std::vector<uint8_t>* out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void AppendField(std::vector<uint8_t>* out, std::string_view s) {
  AppendU32(out, static_cast<uint32_t>(s.size()));
  out->insert(out->end(), s.begin(), s.end());
}

}  // namespace

Status ValidateIdentity(std::string_view what, std::string_view value) {
  if (value.empty() || value.size() > kMaxIdentityBytes) {
    return InvalidArgumentError(std::string(what) + " must be 1 to 128 bytes");
  }
  for (char c : value) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '@' || c == '-';
    if (!ok) return InvalidArgumentError(std::string(what) + " has a character outside [A-Za-z0-9._:@-]");
  }
  return OkStatus();
}

std::vector<uint8_t> OaepLabel(const EncryptionTag& tag) {
  std::vector<uint8_t> out(kOaepLabelPrefix.begin(), kOaepLabelPrefix.end());
  out.push_back(0);
  AppendField(&out, tag.image_id);
  AppendField(&out, tag.tenant);
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<uint8_t>(tag.key_version >> (8 * i)));
  AppendField(&out, tag.data_algorithm);
  return out;
}

std::vector<uint8_t> EscrowLabel(const EncryptionTag& tag) {
  std::vector<uint8_t> out(kEscrowLabelPrefix.begin(), kEscrowLabelPrefix.end());
  out.push_back(0);
  AppendField(&out, tag.image_id);
  AppendField(&out, tag.stream_tenant.empty() ? tag.tenant : tag.stream_tenant);
  const uint64_t version = tag.stream_key_version != 0 ? tag.stream_key_version : tag.key_version;
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<uint8_t>(version >> (8 * i)));
  AppendField(&out, tag.data_algorithm);
  return out;
}

StatusOr<Descriptor> Descriptor::Parse(std::string_view xml) {
  if (xml.size() > kMaxDescriptorBytes) {
    return InvalidArgumentError("descriptor larger than " + std::to_string(kMaxDescriptorBytes) +
                                " bytes");
  }
  // A DOCTYPE is the only way to declare entities or reference a DTD; OVF
  // never needs one, so any is refused before parsing.
  if (xml.find("<!DOCTYPE") != std::string_view::npos ||
      xml.find("<!ENTITY") != std::string_view::npos) {
    return InvalidArgumentError("descriptor has a DOCTYPE (DTDs and entities are not allowed)");
  }
  xmlSetGenericErrorFunc(nullptr, IgnoreXmlError);
  xmlParserCtxtPtr ctxt = xmlNewParserCtxt();
  if (ctxt == nullptr) return ResourceExhaustedError("out of memory");
  // No XML_PARSE_NOENT (no substitution), no DTDLOAD, no network.
  xmlDoc* doc = xmlCtxtReadMemory(ctxt, xml.data(), static_cast<int>(xml.size()),
                                  "descriptor.ovf", nullptr,
                                  XML_PARSE_NONET | XML_PARSE_NOBLANKS | XML_PARSE_NOERROR |
                                      XML_PARSE_NOWARNING | XML_PARSE_NOCDATA);
  std::string error;
  if (doc == nullptr) {
    const xmlError* e = xmlCtxtGetLastError(ctxt);
    error = e != nullptr && e->message != nullptr ? e->message : "malformed XML";
    while (!error.empty() && (error.back() == '\n' || error.back() == ' ')) error.pop_back();
    if (e != nullptr) error = "line " + std::to_string(e->line) + ": " + error;
  }
  xmlFreeParserCtxt(ctxt);
  if (doc == nullptr) return InvalidArgumentError("descriptor is not well-formed XML: " + error);
  Descriptor d(doc);
  if (doc->intSubset != nullptr || doc->extSubset != nullptr) {
    return InvalidArgumentError("descriptor has a DOCTYPE (DTDs and entities are not allowed)");
  }
  xmlNode* root = xmlDocGetRootElement(doc);
  if (!Is(root, kOvf1Namespace, "Envelope") && !Is(root, kOvf2Namespace, "Envelope")) {
    return InvalidArgumentError("descriptor root is not an OVF 1.x or 2.x Envelope");
  }
  std::string_view ns = d.major_version() == 1 ? kOvf1Namespace : kOvf2Namespace;
  xmlNode* refs = FirstChild(root, ns, "References");
  if (refs == nullptr) return InvalidArgumentError("descriptor has no References");
  std::vector<xmlNode*> files = Children(refs, ns, "File");
  if (files.size() > kMaxFiles) {
    return InvalidArgumentError("descriptor references more than " + std::to_string(kMaxFiles) +
                                " files");
  }
  std::set<std::string> ids, hrefs;
  for (xmlNode* f : files) {
    auto id = Attr(f, ns, "id");
    auto href = Attr(f, ns, "href");
    if (!id || !href) return InvalidArgumentError("File without ovf:id or ovf:href");
    // A path into a subfolder is allowed here; sealed packages (and every
    // package the host reads) are flat, which Package checks (§2.3).
    RETURN_IF_ERROR(ValidatePackagePath(*href).WithPrefix("File href"));
    if (!ids.insert(*id).second) return InvalidArgumentError("duplicate File id: " + id->substr(0, 100));
    if (!hrefs.insert(*href).second) return InvalidArgumentError("duplicate File href: " + *href);
    if (auto size = Attr(f, ns, "size"); size && !ParseUint<uint64_t>(*size)) {
      return InvalidArgumentError("File " + *href + " has an invalid ovf:size");
    }
    if (auto chunk = Attr(f, ns, "chunkSize")) {
      auto n = ParseUint<uint64_t>(*chunk);
      if (!n || *n == 0) return InvalidArgumentError("File " + *href + " has an invalid ovf:chunkSize");
    }
  }
  return d;
}

Descriptor::Descriptor(Descriptor&& other) noexcept : doc_(other.doc_) { other.doc_ = nullptr; }
Descriptor& Descriptor::operator=(Descriptor&& other) noexcept {
  if (this != &other) {
    if (doc_ != nullptr) xmlFreeDoc(doc_);
    doc_ = other.doc_;
    other.doc_ = nullptr;
  }
  return *this;
}
Descriptor::~Descriptor() {
  if (doc_ != nullptr) xmlFreeDoc(doc_);
}

int Descriptor::major_version() const {
  return NsIs(xmlDocGetRootElement(doc_)->ns, kOvf1Namespace) ? 1 : 2;
}

Status Descriptor::UpgradeToOvf2(std::vector<std::string>* notes) {
  if (major_version() != 1) return FailedPreconditionError("descriptor is not OVF 1.x");
  xmlNode* root = xmlDocGetRootElement(doc_);
  ForEachElement(root, [](xmlNode* n) {
    for (xmlNs* ns = n->nsDef; ns != nullptr; ns = ns->next) {
      if (NsIs(ns, kOvf1Namespace)) {
        xmlFree(const_cast<xmlChar*>(ns->href));
        ns->href = xmlStrdup(X(kOvf2Namespace));
      }
    }
  });
  xmlAttr* version = xmlHasNsProp(root, X("version"), X(kOvf2Namespace));
  if (version != nullptr) xmlSetNsProp(root, version->ns, X("version"), X("2.0"));
  return CarryExtensions(notes);
}

namespace {

// "prefix:name" of an element, as the descriptor spells it.
std::string QualifiedName(const xmlNode* n) {
  std::string name = reinterpret_cast<const char*>(n->name);
  if (n->ns != nullptr && n->ns->prefix != nullptr) {
    name = reinterpret_cast<const char*>(n->ns->prefix) + (":" + name);
  }
  return name.substr(0, 100);
}

// Vendor sections that exporters mark required although a consumer that
// ignores them runs the machine the same: VMware's boot order (the host
// boots the disks in the order the descriptor's hardware lists them) and
// its IP assignment hints.
bool AdvisoryVendorSection(const xmlNode* n) {
  if (!NsIs(n->ns, kVmwareNamespace)) return false;
  const std::string_view name = reinterpret_cast<const char*>(n->name);
  return name == "BootOrderSection" || name == "IpAssignmentSection";
}

}  // namespace

Status Descriptor::CarryExtensions(std::vector<std::string>* notes) {
  if (major_version() != 2) return FailedPreconditionError("descriptor is not OVF 2");
  xmlNode* root = xmlDocGetRootElement(doc_);
  xmlNs* ovf = xmlSearchNsByHref(doc_, root, X(kOvf2Namespace));
  // OVF 2 allows extensions in the Envelope and a VirtualSystem(Collection)
  // only as members of the Section substitution group, which a vendor's
  // schema cannot join for DSP8023; a VirtualHardwareSection takes any
  // foreign element (§2.2). So a foreign element there moves into its
  // VirtualSystem's VirtualHardwareSection as a non-required extension, or
  // is dropped where there is none; a required one that is not known to be
  // advisory cannot be carried.
  struct Move {
    xmlNode* node;
    xmlNode* into;  // nullptr: dropped
  };
  std::vector<Move> moves;
  std::function<Status(xmlNode*, xmlNode*)> scan = [&](xmlNode* parent, xmlNode* hw) -> Status {
    for (xmlNode* c = parent->children; c != nullptr; c = c->next) {
      if (c->type != XML_ELEMENT_NODE) continue;
      if (NsIs(c->ns, kOvf2Namespace)) {
        if (Is(c, kOvf2Namespace, "VirtualSystem") ||
            Is(c, kOvf2Namespace, "VirtualSystemCollection")) {
          RETURN_IF_ERROR(scan(c, FirstChild(c, kOvf2Namespace, "VirtualHardwareSection")));
        }
        continue;
      }
      const bool required = Attr(c, kOvf2Namespace, "required").value_or("true") != "false";
      if (required && !AdvisoryVendorSection(c)) {
        return UnimplementedError("required extension element " + QualifiedName(c) +
                                  " cannot be carried into OVF 2 (it is allowed only inside a "
                                  "section there, as a non-required extension)");
      }
      moves.push_back({c, hw});
    }
    return OkStatus();
  };
  RETURN_IF_ERROR(scan(root, nullptr));
  for (const Move& m : moves) {
    const std::string name = QualifiedName(m.node);
    const bool was_required =
        Attr(m.node, kOvf2Namespace, "required").value_or("true") != "false";
    xmlUnlinkNode(m.node);
    if (m.into == nullptr || ovf == nullptr) {
      xmlFreeNode(m.node);
      if (notes) notes->push_back("dropped " + name + ": OVF 2 has no place for it there");
      continue;
    }
    xmlAddChild(m.into, m.node);
    xmlSetNsProp(m.node, ovf, X("required"), X("false"));
    if (notes) {
      notes->push_back("kept " + name + " inside the VirtualHardwareSection as a non-required "
                       "extension" + (was_required ? " (it was required)" : ""));
    }
  }
  return OkStatus();
}

namespace {

// The first VirtualSystem of the envelope (depth first through
// VirtualSystemCollections), or nullptr.
xmlNode* FirstVirtualSystem(xmlNode* parent) {
  for (xmlNode* c = parent->children; c != nullptr; c = c->next) {
    if (Is(c, kOvf2Namespace, "VirtualSystem")) return c;
    if (Is(c, kOvf2Namespace, "VirtualSystemCollection")) {
      if (xmlNode* vs = FirstVirtualSystem(c)) return vs;
    }
  }
  return nullptr;
}

// A child element by local name, whatever its namespace (VirtualBox writes
// vbox:Machine's children unprefixed, so in the document's default one).
xmlNode* ChildNamed(const xmlNode* parent, const char* name) {
  for (xmlNode* c = parent->children; c != nullptr; c = c->next) {
    if (c->type == XML_ELEMENT_NODE && std::strcmp(reinterpret_cast<const char*>(c->name), name) == 0) {
      return c;
    }
  }
  return nullptr;
}

// One setting and the element that asked for it.
struct PlatformSetting {
  std::optional<bool> value;
  std::string from;
};

Status Merge(PlatformSetting* into, bool value, const std::string& from, const char* what,
             std::vector<std::string>* sources) {
  if (into->value.has_value() && *into->value != value) {
    return InvalidArgumentError("descriptor asks for conflicting " + std::string(what) + ": " +
                                into->from + " against " + from);
  }
  into->value = value;
  into->from = from;
  if (sources != nullptr) sources->push_back(std::string(what) + " from " + from);
  return OkStatus();
}

bool IsTrue(std::string_view v) { return v == "true" || v == "TRUE" || v == "True" || v == "1"; }
bool IsFalse(std::string_view v) { return v == "false" || v == "FALSE" || v == "False" || v == "0"; }

}  // namespace

StatusOr<PlatformRequest> Descriptor::ReadPlatform(std::vector<std::string>* sources) const {
  if (major_version() != 2) return FailedPreconditionError("descriptor is not OVF 2");
  PlatformRequest out;
  xmlNode* vs = FirstVirtualSystem(xmlDocGetRootElement(doc_));
  xmlNode* hw = vs != nullptr ? FirstChild(vs, kOvf2Namespace, "VirtualHardwareSection") : nullptr;
  if (hw == nullptr) return out;
  PlatformSetting efi, secure_boot, tpm;
  for (xmlNode* c = hw->children; c != nullptr; c = c->next) {
    if (c->type != XML_ELEMENT_NODE) continue;
    if (Is(c, kVirtualBoxNamespace, "Machine")) {
      xmlNode* hardware = ChildNamed(c, "Hardware");
      if (hardware == nullptr) continue;
      if (xmlNode* fw = ChildNamed(hardware, "Firmware")) {
        const std::string type = Attr(fw, "", "type").value_or("BIOS");
        const std::string from = "vbox:Machine Hardware/Firmware type=\"" + type.substr(0, 32) + "\"";
        if (type == "BIOS") {
          RETURN_IF_ERROR(Merge(&efi, false, from, "firmware", sources));
        } else if (type == "EFI" || type == "EFI64" || type == "EFIDUAL") {
          RETURN_IF_ERROR(Merge(&efi, true, from, "firmware", sources));
        } else if (type == "EFI32") {
          return UnimplementedError("descriptor: " + from + " asks for 32-bit EFI firmware; the "
                                    "host boots 64-bit OVMF only");
        } else {
          return InvalidArgumentError("descriptor: " + from + " is not BIOS, EFI, EFI32, EFI64 "
                                      "or EFIDUAL");
        }
      }
      if (xmlNode* t = ChildNamed(hardware, "TrustedPlatformModule")) {
        const std::string type = Attr(t, "", "type").value_or("None");
        const std::string from =
            "vbox:Machine Hardware/TrustedPlatformModule type=\"" + type.substr(0, 32) + "\"";
        if (type == "None") {
          RETURN_IF_ERROR(Merge(&tpm, false, from, "TPM", sources));
        } else if (type == "v2_0" || type == "Swtpm") {
          RETURN_IF_ERROR(Merge(&tpm, true, from, "TPM", sources));
        } else if (type == "v1_2") {
          return UnimplementedError("descriptor: " + from + " asks for a TPM 1.2; the host "
                                    "gives guests a TPM 2.0 only");
        } else {
          return InvalidArgumentError("descriptor: " + from + " is not None, v1_2, v2_0 or Swtpm");
        }
      }
    } else if (Is(c, kVmwareNamespace, "Config")) {
      const std::string key = Attr(c, kVmwareNamespace, "key").value_or("");
      const std::string value = Attr(c, kVmwareNamespace, "value").value_or("");
      const std::string from = "vmw:Config " + key.substr(0, 64) + "=\"" + value.substr(0, 32) + "\"";
      if (key == "firmware") {
        if (value != "bios" && value != "efi") {
          return InvalidArgumentError("descriptor: " + from + " is not bios or efi");
        }
        RETURN_IF_ERROR(Merge(&efi, value == "efi", from, "firmware", sources));
      } else if (key == "bootOptions.efiSecureBootEnabled" || key == "uefi.secureBoot.enabled") {
        if (!IsTrue(value) && !IsFalse(value)) {
          return InvalidArgumentError("descriptor: " + from + " is not true or false");
        }
        RETURN_IF_ERROR(Merge(&secure_boot, IsTrue(value), from, "Secure Boot", sources));
      }
    } else if (Is(c, kOvf2Namespace, "Item")) {
      xmlNode* sub = FirstChild(c, kRasdNamespace, "ResourceSubType");
      if (sub != nullptr && Text(sub) == "vmware.vtpm") {
        RETURN_IF_ERROR(Merge(&tpm, true, "Item rasd:ResourceSubType=\"vmware.vtpm\"", "TPM",
                              sources));
      }
    } else if (Is(c, kVmsealNamespace, "Platform")) {
      const std::string fw = Attr(c, "", "firmware").value_or("bios");
      const std::string sb = Attr(c, "", "secureBoot").value_or("false");
      const std::string t = Attr(c, "", "tpm").value_or("none");
      const std::string from = "vmseal:Platform";
      if ((fw != "bios" && fw != "efi") || (sb != "true" && sb != "false") ||
          (t != "none" && t != "2.0")) {
        return InvalidArgumentError("descriptor: vmseal:Platform firmware=\"" + fw.substr(0, 32) +
                                    "\" secureBoot=\"" + sb.substr(0, 32) + "\" tpm=\"" +
                                    t.substr(0, 32) + "\" is not firmware bios|efi, secureBoot "
                                    "true|false, tpm none|2.0");
      }
      RETURN_IF_ERROR(Merge(&efi, fw == "efi", from + " firmware=\"" + fw + "\"", "firmware",
                            sources));
      RETURN_IF_ERROR(Merge(&secure_boot, sb == "true", from + " secureBoot=\"" + sb + "\"",
                            "Secure Boot", sources));
      RETURN_IF_ERROR(Merge(&tpm, t == "2.0", from + " tpm=\"" + t + "\"", "TPM", sources));
    }
  }
  out.efi = efi.value.value_or(false);
  out.secure_boot = secure_boot.value.value_or(false);
  out.tpm = tpm.value.value_or(false);
  if (out.secure_boot && !out.efi) {
    return InvalidArgumentError("descriptor: " + secure_boot.from +
                                " asks for Secure Boot without EFI firmware" +
                                (efi.from.empty() ? "" : " (" + efi.from + ")"));
  }
  return out;
}

Status Descriptor::SetPlatform(const PlatformRequest& platform) {
  if (major_version() != 2) return FailedPreconditionError("descriptor is not OVF 2");
  if (platform.secure_boot && !platform.efi) {
    return InvalidArgumentError("Secure Boot needs EFI firmware");
  }
  xmlNode* root = xmlDocGetRootElement(doc_);
  xmlNode* vs = FirstVirtualSystem(root);
  xmlNode* hw = vs != nullptr ? FirstChild(vs, kOvf2Namespace, "VirtualHardwareSection") : nullptr;
  if (hw == nullptr) {
    return FailedPreconditionError("descriptor has no VirtualSystem with a VirtualHardwareSection");
  }
  for (xmlNode* old : Children(hw, kVmsealNamespace, "Platform")) {
    xmlUnlinkNode(old);
    xmlFreeNode(old);
  }
  if (platform == PlatformRequest()) return OkStatus();
  xmlNs* ovf = xmlSearchNsByHref(doc_, root, X(kOvf2Namespace));
  xmlNs* vmseal = xmlSearchNsByHref(doc_, root, X(kVmsealNamespace));
  if (vmseal == nullptr) {
    if (xmlSearchNs(doc_, root, X("vmseal")) != nullptr) {
      return InvalidArgumentError("descriptor uses the prefix vmseal for another namespace");
    }
    vmseal = xmlNewNs(root, X(kVmsealNamespace), X("vmseal"));
  }
  if (ovf == nullptr || vmseal == nullptr) return InternalError("no ovf or vmseal namespace");
  xmlNode* p = xmlNewChild(hw, vmseal, X(kPlatformElement), nullptr);
  xmlSetNsProp(p, ovf, X("required"), X("false"));
  xmlNewProp(p, X("firmware"), X(platform.efi ? "efi" : "bios"));
  xmlNewProp(p, X("secureBoot"), X(platform.secure_boot ? "true" : "false"));
  xmlNewProp(p, X("tpm"), X(platform.tpm ? "2.0" : "none"));
  return OkStatus();
}

std::vector<FileRef> Descriptor::Files() const {
  std::vector<FileRef> out;
  std::string_view ns = major_version() == 1 ? kOvf1Namespace : kOvf2Namespace;
  xmlNode* root = xmlDocGetRootElement(doc_);
  xmlNode* refs = FirstChild(root, ns, "References");
  xmlNode* disk_section = FirstChild(root, ns, "DiskSection");
  std::vector<xmlNode*> disks;
  if (disk_section != nullptr) disks = Children(disk_section, ns, "Disk");
  for (xmlNode* f : Children(refs, ns, "File")) {
    FileRef r;
    r.id = Attr(f, ns, "id").value_or("");
    r.href = Attr(f, ns, "href").value_or("");
    if (auto size = Attr(f, ns, "size")) r.size = ParseUint<uint64_t>(*size);
    auto compression = Attr(f, ns, "compression");
    r.compressed = compression && !compression->empty() && *compression != "identity";
    r.chunked = Attr(f, ns, "chunkSize").has_value();
    if (r.compressed) r.compression = *compression;
    if (auto chunk = Attr(f, ns, "chunkSize")) r.chunk_size = ParseUint<uint64_t>(*chunk).value_or(0);
    if (xmlNode* ed = FirstChild(f, kXencNamespace, "EncryptedData")) {
      xmlNode* method = FirstChild(ed, kXencNamespace, "EncryptionMethod");
      r.encryption_algorithm =
          method != nullptr ? Attr(method, "", "Algorithm").value_or("?") : "?";
    }
    for (xmlNode* disk : disks) {
      if (Attr(disk, ns, "fileRef") == r.id) {
        r.disk_format_uri = Attr(disk, ns, "format").value_or("");
        break;
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

bool Descriptor::HasEncryptionSection() const {
  std::string_view ns = major_version() == 1 ? kOvf1Namespace : kOvf2Namespace;
  return FirstChild(xmlDocGetRootElement(doc_), ns, "EncryptionSection") != nullptr;
}

Status Descriptor::AddEncryption(const EncryptionTag& tag, const WrappedKey& key,
                                 const std::vector<SealedFileInfo>& files) {
  if (major_version() != 2) return FailedPreconditionError("descriptor is not OVF 2");
  if (HasEncryptionSection()) return FailedPreconditionError("descriptor is already encrypted");
  xmlNode* root = xmlDocGetRootElement(doc_);
  auto ns_for = [&](std::string_view href, const char* prefix) -> StatusOr<xmlNs*> {
    for (xmlNs* ns = root->nsDef; ns != nullptr; ns = ns->next) {
      if (NsIs(ns, href) && ns->prefix != nullptr) return ns;
    }
    xmlNs* existing = xmlSearchNs(doc_, root, X(prefix));
    if (existing != nullptr) {
      return InvalidArgumentError(std::string("descriptor uses the prefix ") + prefix +
                                  " for another namespace");
    }
    xmlNs* ns = xmlNewNs(root, X(href), X(prefix));
    if (ns == nullptr) return ResourceExhaustedError("out of memory");
    return ns;
  };
  ASSIGN_OR_RETURN(xmlNs * ovf, ns_for(kOvf2Namespace, "ovf"));
  ASSIGN_OR_RETURN(xmlNs * xenc, ns_for(kXencNamespace, "xenc"));
  ASSIGN_OR_RETURN(xmlNs * ds, ns_for(kDsNamespace, "ds"));
  ASSIGN_OR_RETURN(xmlNs * vmseal, ns_for(kVmsealNamespace, "vmseal"));
  xmlNs* xenc11 = nullptr;
  if (key.algorithm == kRsaOaepUri) {
    ASSIGN_OR_RETURN(xenc11, ns_for(kXenc11Namespace, "xenc11"));
  }

  xmlNode* refs = FirstChild(root, kOvf2Namespace, "References");
  std::vector<xmlNode*> file_nodes = Children(refs, kOvf2Namespace, "File");
  if (file_nodes.size() != files.size()) return InternalError("file count mismatch");
  for (size_t i = 0; i < files.size(); ++i) {
    xmlNode* f = file_nodes[i];
    if (Attr(f, kOvf2Namespace, "id").value_or("") != files[i].id) {
      return InternalError("file order mismatch");
    }
    xmlSetNsProp(f, ovf, X("href"), X(files[i].sealed_href.c_str()));
    xmlSetNsProp(f, ovf, X("size"), X(std::to_string(files[i].sealed_size).c_str()));
    xmlUnsetNsProp(f, ovf, X("compression"));
    xmlUnsetNsProp(f, ovf, X("chunkSize"));
    if (!files[i].converted_format_uri.empty()) {
      xmlNode* disk_section = FirstChild(root, kOvf2Namespace, "DiskSection");
      if (disk_section == nullptr) return InternalError("a converted disk without DiskSection");
      for (xmlNode* disk : Children(disk_section, kOvf2Namespace, "Disk")) {
        if (Attr(disk, kOvf2Namespace, "fileRef").value_or("") != files[i].id) continue;
        xmlSetNsProp(disk, ovf, X("format"), X(files[i].converted_format_uri.c_str()));
        xmlSetNsProp(disk, ovf, X("capacity"),
                     X(std::to_string(files[i].converted_capacity).c_str()));
        xmlUnsetNsProp(disk, ovf, X("capacityAllocationUnits"));
        xmlUnsetNsProp(disk, ovf, X("populatedSize"));
      }
    }
    xmlNode* ed = xmlNewChild(f, xenc, X("EncryptedData"), nullptr);
    std::string data_id = std::string(kEncryptedDataIdPrefix) + files[i].id;
    xmlNewProp(ed, X("Id"), X(data_id.c_str()));
    xmlNode* method = xmlNewChild(ed, xenc, X("EncryptionMethod"), nullptr);
    xmlNewProp(method, X("Algorithm"), X(tag.data_algorithm.c_str()));
    xmlNode* key_info = xmlNewChild(ed, ds, X("KeyInfo"), nullptr);
    xmlNode* rm = xmlNewChild(key_info, ds, X("RetrievalMethod"), nullptr);
    xmlNewProp(rm, X("URI"), X(("#" + std::string(kEncryptedKeyId)).c_str()));
    xmlNewProp(rm, X("Type"), X(kEncryptedKeyType));
    xmlNode* cd = xmlNewChild(ed, xenc, X("CipherData"), nullptr);
    xmlNode* cr = xmlNewChild(cd, xenc, X("CipherReference"), nullptr);
    xmlNewProp(cr, X("URI"), X(files[i].sealed_href.c_str()));
  }

  xmlNode* section = xmlNewNode(ovf, X("EncryptionSection"));
  xmlNewTextChild(section, ovf, X("Info"),
                  X("Files sealed by vmseal; the data key is wrapped to the customer key"));
  xmlNode* ek = xmlNewChild(section, xenc, X("EncryptedKey"), nullptr);
  xmlNewProp(ek, X("Id"), X(kEncryptedKeyId));
  xmlNode* method = xmlNewChild(ek, xenc, X("EncryptionMethod"), nullptr);
  xmlNewProp(method, X("Algorithm"), X(key.algorithm.c_str()));
  // The X25519 wrap has no parameters: its associated data is recomputed
  // from the tag (§5), so only the OAEP profiles carry OAEPparams.
  if (key.algorithm != kX25519WrapUri) {
    xmlNewTextChild(method, xenc, X("OAEPparams"),
                    X(crypto::Base64Encode(key.oaep_label).c_str()));
    xmlNode* dm = xmlNewChild(method, ds, X("DigestMethod"), nullptr);
    if (key.algorithm == kRsaOaepUri) {
      xmlNewProp(dm, X("Algorithm"), X(kSha256Uri));
      xmlNode* mgf = xmlNewChild(method, xenc11, X("MGF"), nullptr);
      xmlNewProp(mgf, X("Algorithm"), X(kMgf1Sha256Uri));
    } else {
      xmlNewProp(dm, X("Algorithm"), X(kSha1Uri));
    }
  }
  xmlNode* key_info = xmlNewChild(ek, ds, X("KeyInfo"), nullptr);
  xmlNewTextChild(key_info, ds, X("KeyName"), X(tag.key_id.c_str()));
  xmlNode* cd = xmlNewChild(ek, xenc, X("CipherData"), nullptr);
  xmlNewTextChild(cd, xenc, X("CipherValue"), X(crypto::Base64Encode(key.ciphertext).c_str()));
  xmlNode* props = xmlNewChild(ek, xenc, X("EncryptionProperties"), nullptr);
  xmlNode* prop = xmlNewChild(props, xenc, X("EncryptionProperty"), nullptr);
  xmlNewProp(prop, X("Id"), X(kTagPropertyId));
  xmlNewProp(prop, X("Target"), X(("#" + std::string(kEncryptedKeyId)).c_str()));
  xmlNode* t = xmlNewChild(prop, vmseal, X("Tag"), nullptr);
  xmlNewProp(t, X("format"), X(tag.format.c_str()));
  xmlNewProp(t, X("version"), X(std::to_string(tag.version).c_str()));
  xmlNewProp(t, X("keyWrapAlgorithm"), X(tag.key_wrap_algorithm.c_str()));
  xmlNewProp(t, X("dataAlgorithm"), X(tag.data_algorithm.c_str()));
  xmlNewProp(t, X("chunkSize"), X(std::to_string(tag.chunk_size_bytes).c_str()));
  xmlNewProp(t, X("keyId"), X(tag.key_id.c_str()));
  xmlNewProp(t, X("imageId"), X(tag.image_id.c_str()));
  xmlNewProp(t, X("tenant"), X(tag.tenant.c_str()));
  if (!tag.stream_tenant.empty()) xmlNewProp(t, X("streamTenant"), X(tag.stream_tenant.c_str()));
  xmlNewProp(t, X("keyVersion"), X(std::to_string(tag.key_version).c_str()));
  if (tag.stream_key_version != 0) {
    xmlNewProp(t, X("streamKeyVersion"), X(std::to_string(tag.stream_key_version).c_str()));
  }
  xmlNewProp(t, X("created"), X(tag.created.c_str()));
  xmlNode* rl = xmlNewChild(ek, xenc, X("ReferenceList"), nullptr);
  for (const SealedFileInfo& f : files) {
    xmlNode* dr = xmlNewChild(rl, xenc, X("DataReference"), nullptr);
    xmlNewProp(dr, X("URI"), X(("#" + std::string(kEncryptedDataIdPrefix) + f.id).c_str()));
  }
  xmlAddNextSibling(refs, section);
  return OkStatus();
}

Status Descriptor::ReplaceEncryptedKey(const EncryptionTag& tag, const WrappedKey& key) {
  EncryptionTag old_tag;
  WrappedKey old_key;
  RETURN_IF_ERROR(ReadEncryption(&old_tag, &old_key));
  if (old_tag.key_wrap_algorithm != tag.key_wrap_algorithm || old_key.algorithm != key.algorithm ||
      old_tag.data_algorithm != tag.data_algorithm) {
    return InvalidArgumentError("a re-wrapped key must keep the package's algorithms");
  }
  RETURN_IF_ERROR(ValidateIdentity("tenant", tag.tenant));
  if (!tag.stream_tenant.empty()) RETURN_IF_ERROR(ValidateIdentity("streamTenant", tag.stream_tenant));
  if (tag.key_version == 0) return InvalidArgumentError("invalid keyVersion in tag");
  if (tag.stream_key_version != 0 && tag.stream_key_version == tag.key_version) {
    return InvalidArgumentError("streamKeyVersion is written only when it differs from keyVersion");
  }
  xmlNode* root = xmlDocGetRootElement(doc_);
  xmlNode* section = FirstChild(root, kOvf2Namespace, "EncryptionSection");
  xmlNode* ek = Children(section, kXencNamespace, "EncryptedKey")[0];
  xmlNode* method = FirstChild(ek, kXencNamespace, "EncryptionMethod");
  if (xmlNode* params = method != nullptr ? FirstChild(method, kXencNamespace, "OAEPparams") : nullptr) {
    xmlNodeSetContent(params, X(crypto::Base64Encode(key.oaep_label).c_str()));
  }
  xmlNode* key_info = FirstChild(ek, kDsNamespace, "KeyInfo");
  xmlNode* name = key_info != nullptr ? FirstChild(key_info, kDsNamespace, "KeyName") : nullptr;
  xmlNode* cd = FirstChild(ek, kXencNamespace, "CipherData");
  xmlNode* cv = cd != nullptr ? FirstChild(cd, kXencNamespace, "CipherValue") : nullptr;
  if (name == nullptr || cv == nullptr) return InvalidArgumentError("EncryptedKey lacks KeyName or CipherValue");
  xmlNodeSetContent(name, X(tag.key_id.c_str()));
  xmlNodeSetContent(cv, X(crypto::Base64Encode(key.ciphertext).c_str()));
  xmlNode* props = FirstChild(ek, kXencNamespace, "EncryptionProperties");
  xmlNode* t = nullptr;
  for (xmlNode* p : Children(props, kXencNamespace, "EncryptionProperty")) {
    if (xmlNode* c = FirstChild(p, kVmsealNamespace, "Tag")) t = c;
  }
  if (t == nullptr) return InvalidArgumentError("EncryptedKey has no vmseal encryption tag");
  xmlSetProp(t, X("keyId"), X(tag.key_id.c_str()));
  xmlSetProp(t, X("tenant"), X(tag.tenant.c_str()));
  if (tag.stream_tenant.empty()) {
    xmlUnsetProp(t, X("streamTenant"));
  } else {
    xmlSetProp(t, X("streamTenant"), X(tag.stream_tenant.c_str()));
  }
  xmlSetProp(t, X("keyVersion"), X(std::to_string(tag.key_version).c_str()));
  if (tag.stream_key_version == 0) {
    xmlUnsetProp(t, X("streamKeyVersion"));
  } else {
    xmlSetProp(t, X("streamKeyVersion"), X(std::to_string(tag.stream_key_version).c_str()));
  }
  // What a reader will now see must be exactly what was asked.
  EncryptionTag check_tag;
  WrappedKey check_key;
  RETURN_IF_ERROR(ReadEncryption(&check_tag, &check_key));
  if (check_tag.tenant != tag.tenant || check_tag.key_id != tag.key_id ||
      check_tag.key_version != tag.key_version ||
      check_tag.stream_key_version != tag.stream_key_version ||
      check_key.ciphertext != key.ciphertext || check_key.oaep_label != OaepLabel(check_tag)) {
    return InternalError("the re-wrapped EncryptedKey does not read back");
  }
  return OkStatus();
}

Status Descriptor::ReadEncryption(EncryptionTag* tag, WrappedKey* key) const {
  if (major_version() != 2) return InvalidArgumentError("encrypted packages must be OVF 2");
  xmlNode* root = xmlDocGetRootElement(doc_);
  xmlNode* section = FirstChild(root, kOvf2Namespace, "EncryptionSection");
  if (section == nullptr) return FailedPreconditionError("package is not encrypted");
  std::vector<xmlNode*> keys = Children(section, kXencNamespace, "EncryptedKey");
  if (keys.empty() || keys.size() > 2 ||
      (keys.size() == 2 && Attr(keys[1], "", "Id").value_or("") != kEscrowKeyId)) {
    return InvalidArgumentError("EncryptionSection must hold exactly one EncryptedKey (and at most "
                                "one escrow EncryptedKey after it)");
  }
  xmlNode* ek = keys[0];
  if (Attr(ek, "", "Id").value_or("") != kEncryptedKeyId) {
    return InvalidArgumentError("EncryptedKey Id must be " + std::string(kEncryptedKeyId));
  }
  // The tag.
  xmlNode* props = FirstChild(ek, kXencNamespace, "EncryptionProperties");
  xmlNode* t = nullptr;
  if (props != nullptr) {
    for (xmlNode* p : Children(props, kXencNamespace, "EncryptionProperty")) {
      if (xmlNode* c = FirstChild(p, kVmsealNamespace, "Tag")) t = c;
    }
  }
  if (t == nullptr) return InvalidArgumentError("EncryptedKey has no vmseal encryption tag");
  auto get = [&](const char* name) -> StatusOr<std::string> {
    auto v = Attr(t, "", name);
    if (!v) return InvalidArgumentError(std::string("encryption tag has no ") + name);
    return *v;
  };
  ASSIGN_OR_RETURN(tag->format, get("format"));
  if (tag->format != kTagFormat) {
    return InvalidArgumentError("unknown package format in tag: " + tag->format.substr(0, 64));
  }
  ASSIGN_OR_RETURN(std::string version, get("version"));
  if (ParseUint<uint32_t>(version) != kTagVersion) {
    return InvalidArgumentError("unsupported tag version: " + version.substr(0, 16));
  }
  tag->version = kTagVersion;
  ASSIGN_OR_RETURN(tag->key_wrap_algorithm, get("keyWrapAlgorithm"));
  ASSIGN_OR_RETURN(tag->data_algorithm, get("dataAlgorithm"));
  bool standard = tag->key_wrap_algorithm == kRsaOaepUri && tag->data_algorithm == kStreamAlgorithmUri;
  bool x25519 = tag->key_wrap_algorithm == kX25519WrapUri && tag->data_algorithm == kStreamAlgorithmUri;
  bool compat = tag->key_wrap_algorithm == kRsaOaepMgf1pUri && tag->data_algorithm == kAes256GcmUri;
  if (!standard && !x25519 && !compat) {
    if (tag->key_wrap_algorithm != kRsaOaepUri && tag->key_wrap_algorithm != kRsaOaepMgf1pUri &&
        tag->key_wrap_algorithm != kX25519WrapUri) {
      return InvalidArgumentError("unknown key wrap algorithm in tag: " +
                                  tag->key_wrap_algorithm.substr(0, 200));
    }
    if (tag->data_algorithm != kStreamAlgorithmUri && tag->data_algorithm != kAes256GcmUri) {
      return InvalidArgumentError("unknown data algorithm in tag: " +
                                  tag->data_algorithm.substr(0, 200));
    }
    return InvalidArgumentError("unsupported algorithm combination in tag");
  }
  ASSIGN_OR_RETURN(std::string chunk, get("chunkSize"));
  auto chunk_size = ParseUint<uint32_t>(chunk);
  if (!chunk_size || (compat && *chunk_size != 0)) {
    return InvalidArgumentError("invalid chunkSize in tag");
  }
  tag->chunk_size_bytes = *chunk_size;
  ASSIGN_OR_RETURN(tag->key_id, get("keyId"));
  ASSIGN_OR_RETURN(tag->image_id, get("imageId"));
  RETURN_IF_ERROR(ValidateIdentity("imageId", tag->image_id));
  ASSIGN_OR_RETURN(tag->tenant, get("tenant"));
  RETURN_IF_ERROR(ValidateIdentity("tenant", tag->tenant));
  if (auto st = Attr(t, "", "streamTenant")) {
    RETURN_IF_ERROR(ValidateIdentity("streamTenant", *st));
    tag->stream_tenant = *st;
  }
  ASSIGN_OR_RETURN(std::string key_version, get("keyVersion"));
  auto kv = ParseUint<uint64_t>(key_version);
  if (!kv || *kv == 0) return InvalidArgumentError("invalid keyVersion in tag");
  tag->key_version = *kv;
  if (auto skv = Attr(t, "", "streamKeyVersion")) {
    auto v = ParseUint<uint64_t>(*skv);
    if (!v || *v == 0 || *v == tag->key_version) {
      return InvalidArgumentError("invalid streamKeyVersion in tag (a version >= 1 other than keyVersion)");
    }
    tag->stream_key_version = *v;
  }
  ASSIGN_OR_RETURN(tag->created, get("created"));

  // The wrapped key.
  xmlNode* method = FirstChild(ek, kXencNamespace, "EncryptionMethod");
  if (method == nullptr) return InvalidArgumentError("EncryptedKey has no EncryptionMethod");
  key->algorithm = Attr(method, "", "Algorithm").value_or("");
  if (key->algorithm != tag->key_wrap_algorithm) {
    return InvalidArgumentError("EncryptedKey algorithm does not match the tag");
  }
  if (x25519) {
    // No OAEPparams, DigestMethod or anything else: the associated data is
    // the label recomputed from the tag.
    for (xmlNode* c = method->children; c != nullptr; c = c->next) {
      if (c->type == XML_ELEMENT_NODE) {
        return InvalidArgumentError("x25519 key wrap takes no EncryptionMethod parameters");
      }
    }
    key->oaep_label = OaepLabel(*tag);
  } else {
    xmlNode* dm = FirstChild(method, kDsNamespace, "DigestMethod");
    std::string digest = dm != nullptr ? Attr(dm, "", "Algorithm").value_or("") : "";
    if (standard) {
      xmlNode* mgf = FirstChild(method, kXenc11Namespace, "MGF");
      if (digest != kSha256Uri || mgf == nullptr ||
          Attr(mgf, "", "Algorithm").value_or("") != kMgf1Sha256Uri) {
        return InvalidArgumentError("rsa-oaep key wrap must use SHA-256 and MGF1-SHA256");
      }
    } else if (!digest.empty() && digest != kSha1Uri) {
      return InvalidArgumentError("rsa-oaep-mgf1p key wrap must use SHA-1");
    }
    xmlNode* params = FirstChild(method, kXencNamespace, "OAEPparams");
    if (params == nullptr) return InvalidArgumentError("EncryptedKey has no OAEPparams label");
    auto label = crypto::Base64Decode(Text(params));
    if (!label.ok()) return InvalidArgumentError("OAEPparams is not base64");
    key->oaep_label = std::move(*label);
    if (key->oaep_label != OaepLabel(*tag)) {
      return InvalidArgumentError("OAEP label does not match the tag's identity");
    }
  }
  xmlNode* ki = FirstChild(ek, kDsNamespace, "KeyInfo");
  xmlNode* kn = ki != nullptr ? FirstChild(ki, kDsNamespace, "KeyName") : nullptr;
  if (kn == nullptr || Text(kn) != tag->key_id) {
    return InvalidArgumentError("EncryptedKey KeyName does not match the tag's keyId");
  }
  xmlNode* cd = FirstChild(ek, kXencNamespace, "CipherData");
  xmlNode* cv = cd != nullptr ? FirstChild(cd, kXencNamespace, "CipherValue") : nullptr;
  if (cv == nullptr) return InvalidArgumentError("EncryptedKey has no CipherValue");
  std::string cv_text = Text(cv);
  if (cv_text.size() > 2 * kMaxWrappedKeyBytes) return InvalidArgumentError("wrapped key too large");
  auto ct = crypto::Base64Decode(cv_text);
  if (!ct.ok() || ct->empty() || ct->size() > kMaxWrappedKeyBytes) {
    return InvalidArgumentError("EncryptedKey CipherValue is not a valid wrapped key");
  }
  if (x25519 && ct->size() != crypto::kX25519WrappedBytes) {
    return InvalidArgumentError("an x25519 wrapped key must be " +
                                std::to_string(crypto::kX25519WrappedBytes) + " bytes");
  }
  key->ciphertext = std::move(*ct);

  // Every file is encrypted with the tag's algorithm and referenced.
  std::set<std::string> data_refs;
  if (xmlNode* rl = FirstChild(ek, kXencNamespace, "ReferenceList")) {
    for (xmlNode* dr : Children(rl, kXencNamespace, "DataReference")) {
      data_refs.insert(Attr(dr, "", "URI").value_or(""));
    }
  }
  xmlNode* refs = FirstChild(root, kOvf2Namespace, "References");
  std::vector<xmlNode*> files = Children(refs, kOvf2Namespace, "File");
  if (data_refs.size() != files.size()) {
    return InvalidArgumentError("ReferenceList does not list every file exactly once");
  }
  for (xmlNode* f : files) {
    std::string id = Attr(f, kOvf2Namespace, "id").value_or("");
    std::string href = Attr(f, kOvf2Namespace, "href").value_or("");
    xmlNode* ed = FirstChild(f, kXencNamespace, "EncryptedData");
    if (ed == nullptr) return InvalidArgumentError("file " + href + " is not encrypted");
    std::string data_id = std::string(kEncryptedDataIdPrefix) + id;
    if (Attr(ed, "", "Id").value_or("") != data_id || !data_refs.count("#" + data_id)) {
      return InvalidArgumentError("file " + href + ": EncryptedData Id is not referenced");
    }
    xmlNode* m = FirstChild(ed, kXencNamespace, "EncryptionMethod");
    std::string alg = m != nullptr ? Attr(m, "", "Algorithm").value_or("") : "";
    if (alg != tag->data_algorithm) {
      return InvalidArgumentError("file " + href + ": unknown algorithm " + alg.substr(0, 200));
    }
    xmlNode* ki2 = FirstChild(ed, kDsNamespace, "KeyInfo");
    xmlNode* rm = ki2 != nullptr ? FirstChild(ki2, kDsNamespace, "RetrievalMethod") : nullptr;
    if (rm == nullptr || Attr(rm, "", "URI").value_or("") != "#" + std::string(kEncryptedKeyId)) {
      return InvalidArgumentError("file " + href + ": EncryptedData does not name the key");
    }
    xmlNode* cd2 = FirstChild(ed, kXencNamespace, "CipherData");
    xmlNode* cr = cd2 != nullptr ? FirstChild(cd2, kXencNamespace, "CipherReference") : nullptr;
    if (cr == nullptr || Attr(cr, "", "URI").value_or("") != href) {
      return InvalidArgumentError("file " + href + ": CipherReference does not name the file");
    }
    if (!href.ends_with(kSealedSuffix) || href.size() == kSealedSuffix.size()) {
      return InvalidArgumentError("sealed file name must end with .vmseal: " + href);
    }
  }
  return OkStatus();
}

Status Descriptor::AddEscrowKey(const EscrowKey& key) {
  EncryptionTag tag;
  WrappedKey package_key;
  RETURN_IF_ERROR(ReadEncryption(&tag, &package_key));
  ASSIGN_OR_RETURN(std::optional<EscrowKey> existing, ReadEscrowKey(tag));
  if (existing) return FailedPreconditionError("the package has an escrow key already");
  if (key.algorithm != kRsaOaepUri && key.algorithm != kX25519WrapUri) {
    return InvalidArgumentError("an escrow key is wrapped with rsa-oaep (SHA-256) or the X25519 key wrap");
  }
  if (key.label != EscrowLabel(tag)) return InvalidArgumentError("the escrow label is not the tag's");
  xmlNode* root = xmlDocGetRootElement(doc_);
  xmlNode* section = FirstChild(root, kOvf2Namespace, "EncryptionSection");
  xmlNode* first = FirstChild(section, kXencNamespace, "EncryptedKey");
  xmlNs* xenc = first->ns;
  xmlNs* ds = xmlSearchNsByHref(doc_, first, X(kDsNamespace));
  if (ds == nullptr) return InternalError("the EncryptedKey has no ds namespace");
  xmlNode* ek = xmlNewNode(xenc, X("EncryptedKey"));
  xmlNewProp(ek, X("Id"), X(kEscrowKeyId));
  xmlNewProp(ek, X("Recipient"), X("customer-escrow"));
  xmlNode* method = xmlNewChild(ek, xenc, X("EncryptionMethod"), nullptr);
  xmlNewProp(method, X("Algorithm"), X(key.algorithm.c_str()));
  if (key.algorithm == kRsaOaepUri) {
    xmlNewTextChild(method, xenc, X("OAEPparams"), X(crypto::Base64Encode(key.label).c_str()));
    xmlNode* dm = xmlNewChild(method, ds, X("DigestMethod"), nullptr);
    xmlNewProp(dm, X("Algorithm"), X(kSha256Uri));
    xmlNs* xenc11 = xmlSearchNsByHref(doc_, first, X(kXenc11Namespace));
    if (xenc11 == nullptr) xenc11 = xmlNewNs(ek, X(kXenc11Namespace), X("xenc11"));
    xmlNode* mgf = xmlNewChild(method, xenc11, X("MGF"), nullptr);
    xmlNewProp(mgf, X("Algorithm"), X(kMgf1Sha256Uri));
  }
  xmlNode* key_info = xmlNewChild(ek, ds, X("KeyInfo"), nullptr);
  xmlNewTextChild(key_info, ds, X("KeyName"), X(key.key_id.c_str()));
  xmlNode* cd = xmlNewChild(ek, xenc, X("CipherData"), nullptr);
  xmlNewTextChild(cd, xenc, X("CipherValue"), X(crypto::Base64Encode(key.ciphertext).c_str()));
  xmlAddNextSibling(first, ek);
  // What a reader will see must be exactly what was asked.
  ASSIGN_OR_RETURN(std::optional<EscrowKey> back, ReadEscrowKey(tag));
  if (!back || back->ciphertext != key.ciphertext || back->key_id != key.key_id) {
    xmlUnlinkNode(ek);
    xmlFreeNode(ek);
    return InternalError("the escrow EncryptedKey does not read back");
  }
  return OkStatus();
}

StatusOr<std::optional<EscrowKey>> Descriptor::ReadEscrowKey(const EncryptionTag& tag) const {
  xmlNode* section = FirstChild(xmlDocGetRootElement(doc_), kOvf2Namespace, "EncryptionSection");
  if (section == nullptr) return std::optional<EscrowKey>();
  std::vector<xmlNode*> keys = Children(section, kXencNamespace, "EncryptedKey");
  if (keys.size() < 2) return std::optional<EscrowKey>();
  if (keys.size() > 2 || Attr(keys[1], "", "Id").value_or("") != kEscrowKeyId) {
    return InvalidArgumentError("EncryptionSection must hold at most one escrow EncryptedKey");
  }
  xmlNode* ek = keys[1];
  EscrowKey out;
  xmlNode* method = FirstChild(ek, kXencNamespace, "EncryptionMethod");
  if (method == nullptr) return InvalidArgumentError("escrow EncryptedKey has no EncryptionMethod");
  out.algorithm = Attr(method, "", "Algorithm").value_or("");
  out.label = EscrowLabel(tag);
  if (out.algorithm == kX25519WrapUri) {
    for (xmlNode* c = method->children; c != nullptr; c = c->next) {
      if (c->type == XML_ELEMENT_NODE) {
        return InvalidArgumentError("x25519 escrow key wrap takes no EncryptionMethod parameters");
      }
    }
  } else if (out.algorithm == kRsaOaepUri) {
    xmlNode* dm = FirstChild(method, kDsNamespace, "DigestMethod");
    xmlNode* mgf = FirstChild(method, kXenc11Namespace, "MGF");
    if (dm == nullptr || Attr(dm, "", "Algorithm").value_or("") != kSha256Uri || mgf == nullptr ||
        Attr(mgf, "", "Algorithm").value_or("") != kMgf1Sha256Uri) {
      return InvalidArgumentError("escrow rsa-oaep key wrap must use SHA-256 and MGF1-SHA256");
    }
    xmlNode* params = FirstChild(method, kXencNamespace, "OAEPparams");
    if (params == nullptr) return InvalidArgumentError("escrow EncryptedKey has no OAEPparams label");
    auto label = crypto::Base64Decode(Text(params));
    if (!label.ok() || *label != out.label) {
      return InvalidArgumentError("escrow OAEP label does not match the tag's identity");
    }
  } else {
    return InvalidArgumentError("unknown escrow key wrap algorithm: " + out.algorithm.substr(0, 200));
  }
  xmlNode* ki = FirstChild(ek, kDsNamespace, "KeyInfo");
  xmlNode* kn = ki != nullptr ? FirstChild(ki, kDsNamespace, "KeyName") : nullptr;
  if (kn == nullptr || !Text(kn).starts_with("sha256:") || Text(kn).size() != 71) {
    return InvalidArgumentError("escrow EncryptedKey KeyName is not a key id");
  }
  out.key_id = Text(kn);
  xmlNode* cd = FirstChild(ek, kXencNamespace, "CipherData");
  xmlNode* cv = cd != nullptr ? FirstChild(cd, kXencNamespace, "CipherValue") : nullptr;
  if (cv == nullptr) return InvalidArgumentError("escrow EncryptedKey has no CipherValue");
  const std::string cv_text = Text(cv);
  if (cv_text.size() > 2 * kMaxWrappedKeyBytes) return InvalidArgumentError("escrow wrapped key too large");
  auto ct = crypto::Base64Decode(cv_text);
  if (!ct.ok() || ct->empty() || ct->size() > kMaxWrappedKeyBytes ||
      (out.algorithm == kX25519WrapUri && ct->size() != crypto::kX25519WrappedBytes)) {
    return InvalidArgumentError("escrow EncryptedKey CipherValue is not a valid wrapped key");
  }
  out.ciphertext = std::move(*ct);
  return std::optional<EscrowKey>(std::move(out));
}

namespace {
// The EncryptedKey's EncryptionProperties, or nullptr.
xmlNode* EncryptionProperties(xmlDoc* doc) {
  xmlNode* section = FirstChild(xmlDocGetRootElement(doc), kOvf2Namespace, "EncryptionSection");
  if (section == nullptr) return nullptr;
  xmlNode* ek = FirstChild(section, kXencNamespace, "EncryptedKey");
  return ek != nullptr ? FirstChild(ek, kXencNamespace, "EncryptionProperties") : nullptr;
}
}  // namespace

Status Descriptor::AddReleasePolicy(std::string_view policy_json) {
  if (policy_json.empty() || policy_json.size() > kMaxReleasePolicyBytes) {
    return InvalidArgumentError("release policy must be 1-" + std::to_string(kMaxReleasePolicyBytes) +
                                " bytes");
  }
  xmlNode* props = EncryptionProperties(doc_);
  if (props == nullptr) return FailedPreconditionError("descriptor has no encryption tag");
  ASSIGN_OR_RETURN(std::optional<std::string> existing, ReadReleasePolicy());
  if (existing) return FailedPreconditionError("descriptor already carries a release policy");
  xmlNode* root = xmlDocGetRootElement(doc_);
  xmlNs* xenc = xmlSearchNsByHref(doc_, root, X(kXencNamespace));
  xmlNs* vmseal = xmlSearchNsByHref(doc_, root, X(kVmsealNamespace));
  if (xenc == nullptr || vmseal == nullptr) return InternalError("encryption namespaces missing");
  xmlNode* prop = xmlNewChild(props, xenc, X("EncryptionProperty"), nullptr);
  xmlNewProp(prop, X("Id"), X(kPolicyPropertyId));
  xmlNewProp(prop, X("Target"), X(("#" + std::string(kEncryptedKeyId)).c_str()));
  xmlNewTextChild(prop, vmseal, X("ReleasePolicy"), X(std::string(policy_json).c_str()));
  return OkStatus();
}

StatusOr<std::optional<std::string>> Descriptor::ReadReleasePolicy() const {
  xmlNode* props = EncryptionProperties(doc_);
  std::optional<std::string> out;
  if (props == nullptr) return out;
  for (xmlNode* p : Children(props, kXencNamespace, "EncryptionProperty")) {
    for (xmlNode* c : Children(p, kVmsealNamespace, "ReleasePolicy")) {
      if (out) return InvalidArgumentError("descriptor carries more than one release policy");
      out = Text(c);
      if (out->empty() || out->size() > kMaxReleasePolicyBytes) {
        return InvalidArgumentError("release policy must be 1-" +
                                    std::to_string(kMaxReleasePolicyBytes) + " bytes");
      }
    }
  }
  return out;
}

Status Descriptor::RemoveEncryption(const std::vector<PlainFileInfo>& files) {
  xmlNode* root = xmlDocGetRootElement(doc_);
  xmlNode* section = FirstChild(root, kOvf2Namespace, "EncryptionSection");
  if (section == nullptr) return FailedPreconditionError("package is not encrypted");
  xmlUnlinkNode(section);
  xmlFreeNode(section);
  xmlNode* refs = FirstChild(root, kOvf2Namespace, "References");
  std::vector<xmlNode*> file_nodes = Children(refs, kOvf2Namespace, "File");
  if (file_nodes.size() != files.size()) return InternalError("file count mismatch");
  xmlNs* ovf = nullptr;
  for (xmlNs* ns = root->nsDef; ns != nullptr; ns = ns->next) {
    if (NsIs(ns, kOvf2Namespace) && ns->prefix != nullptr) ovf = ns;
  }
  if (ovf == nullptr) return InternalError("no ovf prefix");
  for (size_t i = 0; i < files.size(); ++i) {
    xmlNode* f = file_nodes[i];
    while (xmlNode* ed = FirstChild(f, kXencNamespace, "EncryptedData")) {
      xmlUnlinkNode(ed);
      xmlFreeNode(ed);
    }
    xmlSetNsProp(f, ovf, X("href"), X(files[i].href.c_str()));
    xmlSetNsProp(f, ovf, X("size"), X(std::to_string(files[i].size).c_str()));
  }
  return OkStatus();
}

std::string Descriptor::Serialize() const {
  xmlChar* mem = nullptr;
  int size = 0;
  xmlDocDumpFormatMemoryEnc(doc_, &mem, &size, "UTF-8", 1);
  std::string out(reinterpret_cast<const char*>(mem), size);
  xmlFree(mem);
  return out;
}

std::string GenerateDescriptor(const VirtualSystemSpec& vm, const std::vector<DiskSpec>& disks) {
  std::string x;
  x += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  x += "<Envelope xmlns=\"" + std::string(kOvf2Namespace) + "\" xmlns:ovf=\"" +
       std::string(kOvf2Namespace) + "\" xmlns:rasd=\"" + std::string(kRasdNamespace) +
       "\" xmlns:vssd=\"" + std::string(kVssdNamespace) + "\">\n";
  x += "  <References>\n";
  for (const DiskSpec& d : disks) {
    x += "    <File ovf:id=\"" + XmlEscape(d.file_id) + "\" ovf:href=\"" + XmlEscape(d.href) +
         "\" ovf:size=\"" + std::to_string(d.file_size) + "\"/>\n";
  }
  x += "  </References>\n";
  x += "  <DiskSection>\n    <Info>Virtual disks</Info>\n";
  for (size_t i = 0; i < disks.size(); ++i) {
    const DiskSpec& d = disks[i];
    x += "    <Disk ovf:diskId=\"vmdisk" + std::to_string(i + 1) + "\" ovf:fileRef=\"" +
         XmlEscape(d.file_id) + "\" ovf:capacity=\"" + std::to_string(d.capacity) +
         "\" ovf:format=\"" + XmlEscape(d.format_uri) + "\"/>\n";
  }
  x += "  </DiskSection>\n";
  x += "  <NetworkSection>\n    <Info>Logical networks</Info>\n"
       "    <Network ovf:name=\"default\">\n      <Description>Default network</Description>\n"
       "    </Network>\n  </NetworkSection>\n";
  x += "  <VirtualSystem ovf:id=\"" + XmlEscape(vm.name) + "\">\n";
  x += "    <Info>A virtual machine sealed by vmseal</Info>\n";
  x += "    <Name>" + XmlEscape(vm.name) + "</Name>\n";
  x += "    <VirtualHardwareSection>\n      <Info>Virtual hardware requirements</Info>\n";
  x += "      <System>\n"
       "        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n"
       "        <vssd:InstanceID>0</vssd:InstanceID>\n"
       "        <vssd:VirtualSystemIdentifier>" + XmlEscape(vm.name) +
       "</vssd:VirtualSystemIdentifier>\n"
       "        <vssd:VirtualSystemType>vmseal-1</vssd:VirtualSystemType>\n"
       "      </System>\n";
  const std::string cpus = std::to_string(vm.cpus);
  x += "      <Item>\n"
       "        <rasd:Description>Number of virtual CPUs</rasd:Description>\n"
       "        <rasd:ElementName>" + cpus + " virtual CPUs</rasd:ElementName>\n"
       "        <rasd:InstanceID>1</rasd:InstanceID>\n"
       "        <rasd:ResourceType>3</rasd:ResourceType>\n"
       "        <rasd:VirtualQuantity>" + cpus + "</rasd:VirtualQuantity>\n"
       "      </Item>\n";
  const std::string mem = std::to_string(vm.memory_mib);
  x += "      <Item>\n"
       "        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>\n"
       "        <rasd:Description>Memory size</rasd:Description>\n"
       "        <rasd:ElementName>" + mem + " MiB of memory</rasd:ElementName>\n"
       "        <rasd:InstanceID>2</rasd:InstanceID>\n"
       "        <rasd:ResourceType>4</rasd:ResourceType>\n"
       "        <rasd:VirtualQuantity>" + mem + "</rasd:VirtualQuantity>\n"
       "      </Item>\n";
  x += "      <Item>\n"
       "        <rasd:Address>0</rasd:Address>\n"
       "        <rasd:Description>Disk controller</rasd:Description>\n"
       "        <rasd:ElementName>virtio-scsi controller</rasd:ElementName>\n"
       "        <rasd:InstanceID>3</rasd:InstanceID>\n"
       "        <rasd:ResourceSubType>virtio-scsi</rasd:ResourceSubType>\n"
       "        <rasd:ResourceType>6</rasd:ResourceType>\n"
       "      </Item>\n";
  uint32_t instance = 4;
  for (size_t i = 0; i < disks.size(); ++i) {
    x += "      <Item>\n"
         "        <rasd:AddressOnParent>" + std::to_string(i) + "</rasd:AddressOnParent>\n"
         "        <rasd:ElementName>disk" + std::to_string(i + 1) + "</rasd:ElementName>\n"
         "        <rasd:HostResource>ovf:/disk/vmdisk" + std::to_string(i + 1) +
         "</rasd:HostResource>\n"
         "        <rasd:InstanceID>" + std::to_string(instance++) + "</rasd:InstanceID>\n"
         "        <rasd:Parent>3</rasd:Parent>\n"
         "        <rasd:ResourceType>17</rasd:ResourceType>\n"
         "      </Item>\n";
  }
  x += "      <Item>\n"
       "        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>\n"
       "        <rasd:Connection>default</rasd:Connection>\n"
       "        <rasd:ElementName>Ethernet adapter on default</rasd:ElementName>\n"
       "        <rasd:InstanceID>" + std::to_string(instance) + "</rasd:InstanceID>\n"
       "        <rasd:ResourceSubType>virtio-net</rasd:ResourceSubType>\n"
       "        <rasd:ResourceType>10</rasd:ResourceType>\n"
       "      </Item>\n";
  if (!(vm.platform == PlatformRequest())) {
    x += "      <vmseal:Platform xmlns:vmseal=\"" + std::string(kVmsealNamespace) +
         "\" ovf:required=\"false\" firmware=\"" + (vm.platform.efi ? "efi" : "bios") +
         "\" secureBoot=\"" + (vm.platform.secure_boot ? "true" : "false") + "\" tpm=\"" +
         (vm.platform.tpm ? "2.0" : "none") + "\"/>\n";
  }
  x += "    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n";
  return x;
}

}  // namespace vmseal::ovf
