// Cheap checks of the signed package texts a host sends with a key release,
// made before any X.509, signature or XML work (docs/protocol.md §5.1,
// "Order of checks"), and the per-host limit on refused releases. Together
// they keep a package a host altered (never verified) from costing the KMS
// more than a good release: the usual alterations are refused for the price
// of a SHA-256, and the ones that need the full verification to be refused
// (a changed .cert) are limited per host, as are releases refused for the
// host's evidence, nonce, key, label or policy.
//
// Thread-safe.
#ifndef VMSEAL_KMS_PACKAGE_PRECHECK_H_
#define VMSEAL_KMS_PACKAGE_PRECHECK_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "base/status.h"
#include "crypto/keys.h"
#include "ovf/signed_package_texts.h"
#include "rate_limit/rate_limit.h"

namespace vmseal::kms {

class PackagePrecheck {
 public:
  struct Options {
    // Refused releases (KmsService counts every refusal caused by what the
    // host sent: package texts, evidence, nonce, key, label, policy; not
    // grants, revocations or store outages) a host may have before it is refused
    // (rate_limited) for base_seconds, doubling with each further failure up
    // to max_seconds. A host's count is forgotten forget_after_seconds
    // after its last failure; a verified package does not clear it (else a
    // host could alternate good and altered texts). Defaults: 10 failures,
    // then 1 s doubling to 300 s, forgotten after an hour.
    rate_limit::FailureBackoff::Options failures{10, 1, 300, 3600, 65536};
    // .cert texts remembered with the manifest their signature verified
    // over. When full, the memory is cleared. Default 4096.
    size_t max_certificates = 4096;
  };
  explicit PackagePrecheck(Options options, rate_limit::Clock clock = rate_limit::SteadyClock());

  // RESOURCE_EXHAUSTED "rate_limited: ..." while `host_id` is blocked after
  // too many refused releases; OK otherwise.
  Status CheckHost(const std::string& host_id) const;
  // Counts one refused release of `host_id` (a failed package check, cheap
  // or full, or a refusal of its evidence, key or policy).
  void RecordFailure(const std::string& host_id);

  // The checks that need no parse of X.509, XML or a signature, in this
  // order; UNAUTHENTICATED "bad_signature: ..." when one proves the texts
  // were not what was signed, OK when the full verification must decide:
  //  1. the manifest (a plain text) lists `descriptor_name` with the
  //     digest of `descriptor`;
  //  2. the exact .cert text, if it was seen verifying before, verified
  //     over this manifest (its signature verifies one manifest digest
  //     only: a known .cert beside another manifest is a forgery);
  //  3. a .cert whose certificates (everything after the signature line)
  //     are byte for byte those of one that verified before: its signature
  //     line is checked over the manifest with that signer's key, remembered
  //     parsed (a signature verification, no X.509 decoding).
  // Texts over the bounds of docs/protocol.md §5 are left to the full
  // verification (which refuses them).
  Status Check(const ovf::SignedPackageTexts& texts) const;
  // Records that `texts` verified in full (its .cert over its manifest),
  // signed by `signer` (the public key of the .cert's signer certificate).
  void RememberVerified(const ovf::SignedPackageTexts& texts, const crypto::PublicKey& signer);

  // Certificates remembered (for tests).
  size_t remembered_certificates() const;

 private:
  const Options options_;
  rate_limit::FailureBackoff failures_;
  mutable std::mutex mu_;
  // SHA-256 of a verified .cert text -> SHA-256 of the manifest it signed.
  std::map<std::string, std::string> manifest_of_cert_;
  // SHA-256 of the certificates of a verified .cert -> its signer's key.
  std::map<std::string, std::shared_ptr<const crypto::PublicKey>> signer_of_chain_;
};

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_PACKAGE_PRECHECK_H_
