// The OVF descriptor parser (src/ovf/descriptor): untrusted XML through
// Descriptor::Parse, then everything a reader or the sealer does with a
// parsed descriptor: Files, ReadEncryption, the 1.x -> 2.x upgrade,
// AddEncryption / RemoveEncryption and Serialize, and a re-parse of the
// serialized document (which must succeed: we wrote it).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "ovf/descriptor.h"

namespace ovf = vmseal::ovf;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parsed = ovf::Descriptor::Parse(vmseal::fuzz::AsText(data, size));
  if (!parsed.ok()) return 0;
  ovf::Descriptor d = std::move(*parsed);
  const std::vector<ovf::FileRef> files = d.Files();

  if (d.HasEncryptionSection()) {
    ovf::EncryptionTag tag;
    ovf::WrappedKey key;
    if (d.ReadEncryption(&tag, &key).ok()) {
      (void)ovf::OaepLabel(tag);
      std::vector<ovf::PlainFileInfo> plain;
      for (const ovf::FileRef& f : files) plain.push_back({f.id, "p" + std::to_string(plain.size()), 1});
      (void)d.RemoveEncryption(plain);
    }
  } else {
    if (d.major_version() == 1) (void)d.UpgradeToOvf2();
    if (d.major_version() == 2 && !files.empty()) {
      ovf::EncryptionTag tag;
      tag.format = "vmseal-package";
      tag.version = 1;
      tag.key_wrap_algorithm = "http://www.w3.org/2009/xmlenc11#rsa-oaep";
      tag.data_algorithm = "urn:vmseal:stream:v1";
      tag.chunk_size_bytes = 1 << 20;
      tag.key_id = "sha256:" + std::string(64, '0');
      tag.image_id = "img";
      tag.tenant = "t";
      tag.created = "2026-01-01T00:00:00Z";
      ovf::WrappedKey key{tag.key_wrap_algorithm, ovf::OaepLabel(tag), std::vector<uint8_t>(256, 7)};
      std::vector<ovf::SealedFileInfo> sealed;
      for (const ovf::FileRef& f : files) {
        sealed.push_back({f.id, "s" + std::to_string(sealed.size()), 96});
      }
      (void)d.AddEncryption(tag, key, sealed);
    }
  }
  const std::string xml = d.Serialize();
  if (xml.size() <= 4u << 20 && !ovf::Descriptor::Parse(xml).ok()) __builtin_trap();
  return 0;
}
