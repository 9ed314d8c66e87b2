#include "store/internal/s3_xml.h"

#include <libxml/parser.h>
#include <libxml/tree.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>

namespace vmseal::store::internal {
namespace {

struct XmlDocDeleter {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};
using XmlDocPtr = std::unique_ptr<xmlDoc, XmlDocDeleter>;

// The first element named `name` at or below `node` and its siblings
// (depth first). libxml2 bounds the depth of a parsed document (256 levels
// without XML_PARSE_HUGE), which bounds this recursion.
const xmlNode* FindElement(const xmlNode* node, const char* name) {
  for (const xmlNode* n = node; n != nullptr; n = n->next) {
    if (n->type == XML_ELEMENT_NODE &&
        std::strcmp(reinterpret_cast<const char*>(n->name), name) == 0) {
      return n;
    }
    if (const xmlNode* found = FindElement(n->children, name)) return found;
  }
  return nullptr;
}

std::string ElementText(const xmlNode* node) {
  if (node == nullptr) return "";
  xmlChar* text = xmlNodeGetContent(node);
  std::string out = text != nullptr ? reinterpret_cast<const char*>(text) : "";
  xmlFree(text);
  return out;
}

StatusOr<XmlDocPtr> ParseXml(std::string_view body) {
  if (body.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return UnavailableError("S3 answered with an oversized XML document");
  }
  XmlDocPtr doc(xmlReadMemory(body.data(), static_cast<int>(body.size()), "s3.xml", nullptr,
                              XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
  if (doc == nullptr) return UnavailableError("S3 answered with malformed XML");
  return doc;
}

}  // namespace

StatusOr<std::string> ParseInitiateUpload(std::string_view body) {
  ASSIGN_OR_RETURN(XmlDocPtr doc, ParseXml(body));
  std::string upload_id = ElementText(FindElement(xmlDocGetRootElement(doc.get()), "UploadId"));
  if (upload_id.empty()) return UnavailableError("S3 initiate upload: no UploadId");
  return upload_id;
}

StatusOr<ListPage> ParseListPage(std::string_view body) {
  ASSIGN_OR_RETURN(XmlDocPtr doc, ParseXml(body));
  const xmlNode* root = xmlDocGetRootElement(doc.get());
  if (root == nullptr) return UnavailableError("S3 list: empty answer");
  ListPage page;
  for (const xmlNode* n = root->children; n != nullptr; n = n->next) {
    if (n->type != XML_ELEMENT_NODE) continue;
    std::string_view name = reinterpret_cast<const char*>(n->name);
    if (name == "Contents") {
      ObjectInfo info;
      info.key = ElementText(FindElement(n->children, "Key"));
      info.size_bytes = std::strtoull(ElementText(FindElement(n->children, "Size")).c_str(),
                                      nullptr, 10);
      page.objects.push_back(std::move(info));
    } else if (name == "IsTruncated") {
      page.truncated = ElementText(n) == "true";
    } else if (name == "NextContinuationToken") {
      page.next_token = ElementText(n);
    }
  }
  return page;
}

}  // namespace vmseal::store::internal
