// Known-answer vectors (docs/format/stream.md §8), generated once by an
// independent implementation (tests/testdata/stream/gen_vectors.py) and
// checked in. Every intermediate value is re-derived with vmseal's code.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <string>
#include <vector>

#include "crypto/primitives.h"
#include "stream/internal/chunk_cipher.h"
#include "stream/internal/header.h"
#include "stream/internal/seal_internal.h"
#include "stream/stream.h"
#include "testing/test_util.h"

namespace vmseal::stream {
namespace {

using crypto::HexDecode;
using crypto::HexEncode;

nlohmann::json LoadVectors() {
  std::ifstream f(vmseal::testing::SourceDir() + "/tests/testdata/stream/vectors.json");
  EXPECT_TRUE(f.good());
  return nlohmann::json::parse(f);
}

std::vector<uint8_t> Hex(const nlohmann::json& v) {
  auto b = HexDecode(v.get<std::string>());
  EXPECT_TRUE(b.ok());
  return b.ok() ? *b : std::vector<uint8_t>{};
}

StreamContext ContextOf(const nlohmann::json& v) {
  return {v["image_id"].get<std::string>(), v["tenant"].get<std::string>(),
          v["key_version"].get<uint64_t>()};
}

internal::Salt SaltOf(const nlohmann::json& v) {
  internal::Salt salt{};
  auto b = Hex(v["salt"]);
  EXPECT_EQ(b.size(), salt.size());
  std::copy_n(b.begin(), std::min(b.size(), salt.size()), salt.begin());
  return salt;
}

TEST(StreamVectorsTest, FileHasTheNamedVectors) {
  auto doc = LoadVectors();
  EXPECT_EQ(doc["format"], std::string(kAlgorithmUri));
  ASSERT_GE(doc["vectors"].size(), 6u);
  EXPECT_EQ(doc["vectors"][0]["name"], "three-chunks");
}

TEST(StreamVectorsTest, DerivationsMatch) {
  const auto doc = LoadVectors();
  for (const auto& v : doc["vectors"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    const uint32_t chunk = v["chunk_size"].get<uint32_t>();
    SecretBytes data_key(Hex(v["data_key"]));
    auto prefix = internal::EncodeHeaderPrefix(chunk, SaltOf(v));
    EXPECT_EQ(HexEncode(prefix), v["header_prefix"].get<std::string>());
    EXPECT_EQ(HexEncode(internal::EncodeContext(ContextOf(v))),
              v["context_bytes"].get<std::string>());
    auto keys = internal::DeriveKeys(data_key, chunk, SaltOf(v), ContextOf(v));
    ASSERT_OK(keys);
    EXPECT_EQ(HexEncode(keys->stream_key.UnsafeSpan()), v["stream_key"].get<std::string>());
    EXPECT_EQ(HexEncode(keys->commitment), v["commitment"].get<std::string>());
    EXPECT_EQ(HexEncode(internal::EncodeHeader(chunk, SaltOf(v), keys->commitment)),
              v["header"].get<std::string>());
  }
}

TEST(StreamVectorsTest, ChunksMatch) {
  const auto doc = LoadVectors();
  for (const auto& v : doc["vectors"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    SecretBytes stream_key(Hex(v["stream_key"]));
    auto cipher = internal::ChunkCipher::Create(stream_key);
    ASSERT_OK(cipher);
    for (const auto& c : v["chunks"]) {
      const uint64_t index = c["index"].get<uint64_t>();
      const bool last = c["last"].get<bool>();
      EXPECT_EQ(HexEncode(internal::ChunkNonce(index, last)), c["nonce"].get<std::string>());
      std::vector<uint8_t> pt = Hex(c["plaintext"]);
      std::vector<uint8_t> out(pt.size() + kTagBytes);
      ASSERT_OK((*cipher)->Seal(index, last, pt, out));
      EXPECT_EQ(HexEncode(std::span(out).first(pt.size())), c["ciphertext"].get<std::string>());
      EXPECT_EQ(HexEncode(std::span(out).last(kTagBytes)), c["tag"].get<std::string>());
    }
  }
}

TEST(StreamVectorsTest, SealReproducesTheStream) {
  const auto doc = LoadVectors();
  for (const auto& v : doc["vectors"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    std::vector<uint8_t> pt = Hex(v["plaintext"]);
    internal::MemoryFile in(pt);
    std::vector<uint8_t> sealed;
    internal::VectorWritableFile out(&sealed);
    SealOptions opts;
    opts.chunk_size_bytes = v["chunk_size"].get<uint32_t>();
    ASSERT_OK(internal::SealWithSaltForTesting(in, &out, SecretBytes(Hex(v["data_key"])),
                                               ContextOf(v), opts, SaltOf(v)));
    EXPECT_EQ(HexEncode(sealed), v["sealed"].get<std::string>());
  }
}

TEST(StreamVectorsTest, OpenRecoversThePlaintext) {
  const auto doc = LoadVectors();
  for (const auto& v : doc["vectors"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    std::vector<uint8_t> sealed = Hex(v["sealed"]);
    internal::MemoryFile in(sealed);
    std::vector<uint8_t> pt;
    internal::VectorWritableFile out(&pt);
    ASSERT_OK(Open(in, &out, SecretBytes(Hex(v["data_key"])), ContextOf(v), OpenOptions{}));
    EXPECT_EQ(HexEncode(pt), v["plaintext"].get<std::string>());
  }
}

}  // namespace
}  // namespace vmseal::stream
