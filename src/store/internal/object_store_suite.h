// The ObjectStore conformance suite, run against every backend: each backend's
// test file instantiates ObjectStoreTest with a factory.
#ifndef VMSEAL_STORE_INTERNAL_OBJECT_STORE_SUITE_H_
#define VMSEAL_STORE_INTERNAL_OBJECT_STORE_SUITE_H_

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "store/object_store.h"

namespace vmseal::store::testing {

struct StoreFactory {
  std::string name;
  // Makes an empty store; `scratch_dir` is a fresh temp directory.
  std::function<StatusOr<std::unique_ptr<ObjectStore>>(const std::string& scratch_dir)> make;
  // Part size the backend switches to multipart at (0 = none).
  uint64_t part_size_bytes = 0;
  // A second, independent handle on the store `make` last made for
  // `scratch_dir` (what another portal replica sharing it opens).
  std::function<StatusOr<std::unique_ptr<ObjectStore>>(const std::string& scratch_dir)> reopen;
};

inline void PrintTo(const StoreFactory& f, std::ostream* os) { *os << f.name; }

class ObjectStoreTest : public ::testing::TestWithParam<StoreFactory> {};

// A reader that yields `data` then fails with UNAVAILABLE "connection reset"
// after `fail_after` bytes (a broken upload).
class BrokenReader final : public Reader {
 public:
  BrokenReader(std::string_view data, size_t fail_after) : data_(data), left_(fail_after) {}
  StatusOr<size_t> Read(std::span<uint8_t> out) override;

 private:
  std::string_view data_;
  size_t left_;
};

// Deterministic test content of `n` bytes.
std::string Pattern(size_t n, uint8_t seed = 1);

}  // namespace vmseal::store::testing

#endif  // VMSEAL_STORE_INTERNAL_OBJECT_STORE_SUITE_H_
