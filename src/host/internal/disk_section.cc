#include "host/internal/disk_section.h"

#include <libxml/parser.h>
#include <libxml/tree.h>

#include <memory>

namespace vmseal::host::internal {
namespace {

struct DocDeleter {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};

std::string_view Name(const xmlChar* name) { return reinterpret_cast<const char*>(name); }

// The value of the attribute with local name `name` in any namespace (OVF 1
// and 2 descriptors use different ones); false when absent.
bool Attribute(const xmlNode* node, std::string_view name, std::string* value) {
  for (const xmlAttr* a = node->properties; a; a = a->next) {
    if (Name(a->name) != name) continue;
    xmlChar* v = xmlNodeListGetString(node->doc, a->children, 1);
    *value = v ? reinterpret_cast<const char*>(v) : "";
    xmlFree(v);
    return true;
  }
  return false;
}

const xmlNode* FindDisk(const xmlNode* node, std::string_view file_id, bool in_section) {
  for (const xmlNode* c = node->children; c; c = c->next) {
    if (c->type != XML_ELEMENT_NODE) continue;
    std::string ref;
    if (in_section && Name(c->name) == "Disk" && Attribute(c, "fileRef", &ref) &&
        ref == file_id) {
      return c;
    }
    const bool section = in_section || Name(c->name) == "DiskSection";
    if (const xmlNode* d = FindDisk(c, file_id, section)) return d;
  }
  return nullptr;
}

}  // namespace

StatusOr<std::string> DeclaredDiskFormat(std::string_view descriptor_xml,
                                         std::string_view file_id) {
  if (descriptor_xml.find("<!DOCTYPE") != std::string_view::npos) {
    return InvalidArgumentError("descriptor: DOCTYPE not allowed");
  }
  std::unique_ptr<xmlDoc, DocDeleter> doc(xmlReadMemory(
      descriptor_xml.data(), static_cast<int>(descriptor_xml.size()), "descriptor.ovf",
      nullptr, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
  if (!doc) return InvalidArgumentError("descriptor: not well-formed XML");
  const xmlNode* root = xmlDocGetRootElement(doc.get());
  const xmlNode* disk = root ? FindDisk(root, file_id, false) : nullptr;
  std::string format;
  if (disk != nullptr) Attribute(disk, "format", &format);
  return format;
}

}  // namespace vmseal::host::internal
