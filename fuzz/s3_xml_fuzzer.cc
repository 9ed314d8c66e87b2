// The S3 XML answers the object store parses (src/store/internal/s3_xml):
// InitiateMultipartUploadResult and ListObjectsV2 pages, from whatever
// answers at the S3 endpoint.
#include <cstddef>
#include <cstdint>

#include "fuzz_util.h"
#include "store/internal/s3_xml.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = vmseal::fuzz::AsText(data, size);
  (void)vmseal::store::internal::ParseInitiateUpload(text);
  (void)vmseal::store::internal::ParseListPage(text);
  return 0;
}
