#include "host/internal/virtual_hardware.h"

#include <libxml/parser.h>
#include <libxml/tree.h>

#include <cstdlib>
#include <memory>
#include <string>

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
