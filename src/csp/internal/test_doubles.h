// Test doubles for the portal core (tests only).
#ifndef VMSEAL_CSP_INTERNAL_TEST_DOUBLES_H_
#define VMSEAL_CSP_INTERNAL_TEST_DOUBLES_H_

#include <map>
#include <mutex>
#include <string>

#include "csp/hosts.h"
#include "csp/package_verifier.h"

namespace vmseal::csp::testing {

inline constexpr char kSealedMagic[] = "VMSEAL-SEALED\n";

// Stands in for the OVF verifier: a package is "sealed" when it starts with
// kSealedMagic and has a bad manifest when it contains "BAD-DIGEST".
class FakeVerifier final : public PackageVerifier {
 public:
  StatusOr<VerifiedPackage> Verify(const RandomAccessFile& package) const override {
    ASSIGN_OR_RETURN(uint64_t size, package.Size());
    std::string data(size, '\0');
    ASSIGN_OR_RETURN(size_t n, package.Read(0, std::span<uint8_t>(
                                                   reinterpret_cast<uint8_t*>(data.data()), size)));
    data.resize(n);
    if (data.find("BAD-DIGEST") != std::string::npos) {
      return DataLossError("manifest digest mismatch for disk1.vmdk");
    }
    if (!data.starts_with(kSealedMagic)) return FailedPreconditionError("disk is not encrypted");
    return VerifiedPackage{"img", "key-1", 1};
  }
};

// Verdicts set by the test.
class FakeTrustSource final : public TrustSource {
 public:
  void Set(const std::string& host_id, TrustVerdict v) {
    std::lock_guard<std::mutex> lock(mu_);
    verdicts_[host_id] = v;
  }
  StatusOr<TrustVerdict> LatestVerdict(const std::string& host_id) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = verdicts_.find(host_id);
    if (it == verdicts_.end()) return NotFoundError("no verdict for host");
    return it->second;
  }

 private:
  std::mutex mu_;
  std::map<std::string, TrustVerdict> verdicts_;
};

}  // namespace vmseal::csp::testing

#endif  // VMSEAL_CSP_INTERNAL_TEST_DOUBLES_H_
