// Parsing of the S3 XML answers the object store reads (untrusted: whatever
// answers at the endpoint). Internal to src/store; exposed in this header so
// that the parsers can be fuzzed (fuzz/s3_xml_fuzzer.cc).
#ifndef VMSEAL_STORE_INTERNAL_S3_XML_H_
#define VMSEAL_STORE_INTERNAL_S3_XML_H_

#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "store/object_store.h"

namespace vmseal::store::internal {

// The UploadId of an InitiateMultipartUploadResult. UNAVAILABLE for
// malformed XML or an answer without one.
StatusOr<std::string> ParseInitiateUpload(std::string_view body);

// One page of a ListObjectsV2 answer.
struct ListPage {
  std::vector<ObjectInfo> objects;  // key and size of each Contents
  bool truncated = false;           // IsTruncated
  std::string next_token;           // NextContinuationToken
};
// UNAVAILABLE for malformed XML or an empty document.
StatusOr<ListPage> ParseListPage(std::string_view body);

}  // namespace vmseal::store::internal

#endif  // VMSEAL_STORE_INTERNAL_S3_XML_H_
