// XML character escaping for the descriptors vmseal writes (element text and
// double-quoted attribute values).
#ifndef VMSEAL_OVF_INTERNAL_XML_ESCAPE_H_
#define VMSEAL_OVF_INTERNAL_XML_ESCAPE_H_

#include <string>
#include <string_view>

namespace vmseal::ovf::internal {

// `s` with &, <, > and " replaced by their entities.
std::string XmlEscape(std::string_view s);

}  // namespace vmseal::ovf::internal

#endif  // VMSEAL_OVF_INTERNAL_XML_ESCAPE_H_
