#include "attest/reason.h"

#include <array>
#include <utility>

namespace vmseal::attest {
namespace {

constexpr std::array<std::pair<Reason, std::string_view>, 11> kNames = {{
    {Reason::kNone, "none"},
    {Reason::kMalformedEvidence, "malformed_evidence"},
    {Reason::kBadSignature, "bad_signature"},
    {Reason::kNonceMismatch, "nonce_mismatch"},
    {Reason::kPcrSelectionMismatch, "pcr_selection_mismatch"},
    {Reason::kPcrDigestMismatch, "pcr_digest_mismatch"},
    {Reason::kBindingKeyNotCertified, "binding_key_not_certified"},
    {Reason::kBindingKeyAttributes, "binding_key_attributes"},
    {Reason::kAkAttributes, "ak_attributes"},
    {Reason::kEkChainInvalid, "ek_chain_invalid"},
    {Reason::kCredentialMismatch, "credential_mismatch"},
}};

}  // namespace

std::string_view ReasonName(Reason reason) {
  for (const auto& [r, name] : kNames) {
    if (r == reason) return name;
  }
  return "none";
}

Status AttestFailure(Reason reason, std::string_view detail) {
  std::string message(ReasonName(reason));
  message += ": ";
  message += detail;
  StatusCode code = reason == Reason::kMalformedEvidence ? StatusCode::kInvalidArgument
                                                         : StatusCode::kPermissionDenied;
  return Status(code, std::move(message));
}

Reason ReasonOf(const Status& status) {
  if (status.ok()) return Reason::kNone;
  std::string_view message = status.message();
  size_t colon = message.find(": ");
  if (colon == std::string_view::npos) return Reason::kNone;
  std::string_view name = message.substr(0, colon);
  for (const auto& [r, n] : kNames) {
    if (n == name) return r;
  }
  return Reason::kNone;
}

}  // namespace vmseal::attest
