// The package open path (src/ovf/package): an OVA read by Package::Open (tar
// index, descriptor, manifest and its digests, .cert, EncryptionSection and
// its encryption tag), then, for an encrypted package, the data key unwrapped
// with a fixed X25519 key and every file decrypted. The seeds in
// fuzz/corpus/ovf_package were sealed to this key, so they open fully.
//
// The key below is a fuzzing-only test key; it protects nothing.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "base/env.h"
#include "fuzz_util.h"
#include "ovf/package.h"

namespace ovf = vmseal::ovf;

namespace {

constexpr std::string_view kFuzzKeyPem =
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VuBCIEIAg3XqxWqKWR/2C9bS+bjuGk+7qX1OBNF1AxuRBVKmF7\n"
    "-----END PRIVATE KEY-----\n";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vmseal::fuzz::MemFd fd(data, size);
  if (!fd.ok()) return 0;
  ovf::PackageOpenOptions options;
  options.require_encrypted = false;
  options.require_manifest = false;
  auto package = ovf::Package::Open(vmseal::Env::Default(), fd.path(), options);
  if (!package.ok()) return 0;
  const ovf::Package& p = **package;
  if (!p.encrypted()) return 0;
  auto key = p.UnwrapDataKey(kFuzzKeyPem);
  if (!key.ok()) return 0;
  for (const ovf::FileRef& f : p.files()) {
    vmseal::fuzz::CountingFile out;
    (void)p.DecryptFile(f.id, *key, &out);
    auto reader = p.NewDiskReader(f.id, *key);
    if (reader.ok()) {
      uint8_t buf[64];
      (void)(*reader)->ReadAt((*reader)->plaintext_size() / 2, buf);
    }
  }
  return 0;
}
