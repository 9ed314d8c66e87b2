#include "attest/evidence.h"

#include <nlohmann/json.hpp>

#include "attest/reason.h"
#include "json/json.h"

namespace vmseal::attest {
namespace {

using crypto::Base64Encode;
using nlohmann::json;

Status Malformed(std::string_view what) { return AttestFailure(Reason::kMalformedEvidence, what); }

StatusOr<json> ParseObject(std::string_view text) {
  StatusOr<json> j = ParseJson(text);
  if (!j.ok()) return Malformed("body is not a JSON object: " + std::string(j.status().message()));
  if (!j->is_object()) return Malformed("body is not a JSON object");
  return j;
}

StatusOr<Bytes> GetB64(const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || !it->is_string()) {
    return Malformed(std::string("missing or non-string field ") + field);
  }
  auto bytes = crypto::Base64Decode(it->get_ref<const std::string&>());
  if (!bytes.ok()) return Malformed(std::string("bad base64 in field ") + field);
  return std::move(bytes).value();
}

StatusOr<const json*> GetObject(const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || !it->is_object()) return Malformed(std::string("missing object ") + field);
  return &*it;
}

}  // namespace

std::string EvidenceToJson(const Evidence& e) {
  json values = json::array();
  for (const Bytes& v : e.quote.pcr_values) values.push_back(Base64Encode(v));
  json j = {
      {"version", 1},
      {"nonce", Base64Encode(e.nonce)},
      {"pcr_bank", "sha256"},
      {"pcr_selection", e.pcr_selection},
      {"quote",
       {{"attest", Base64Encode(e.quote.attest)},
        {"signature", Base64Encode(e.quote.signature)},
        {"pcr_values", values}}},
      {"certify",
       {{"attest", Base64Encode(e.certify.attest)},
        {"signature", Base64Encode(e.certify.signature)},
        {"key_public", Base64Encode(e.certify.key_public)}}},
  };
  return j.dump();
}

StatusOr<Evidence> EvidenceFromJson(std::string_view text) {
  ASSIGN_OR_RETURN(json j, ParseObject(text));
  return EvidenceFromJsonValue(j);
}

StatusOr<Evidence> EvidenceFromJsonValue(const nlohmann::json& j) {
  if (!j.is_object()) return Malformed("evidence is not a JSON object");
  auto version = j.find("version");
  if (version == j.end() || !version->is_number_integer() || version->get<int64_t>() != 1) {
    return Malformed("unsupported evidence version");
  }
  auto bank = j.find("pcr_bank");
  if (bank == j.end() || !bank->is_string() || bank->get_ref<const std::string&>() != "sha256") {
    return Malformed("pcr_bank must be sha256");
  }
  Evidence e;
  ASSIGN_OR_RETURN(e.nonce, GetB64(j, "nonce"));
  auto sel = j.find("pcr_selection");
  if (sel == j.end() || !sel->is_array() || sel->empty() || sel->size() > 24) {
    return Malformed("pcr_selection must be a non-empty array of at most 24 indices");
  }
  for (const json& v : *sel) {
    if (!v.is_number_unsigned() || v.get<uint64_t>() > 23) {
      return Malformed("pcr_selection index out of range");
    }
    e.pcr_selection.push_back(static_cast<uint32_t>(v.get<uint64_t>()));
  }
  ASSIGN_OR_RETURN(const json* quote, GetObject(j, "quote"));
  ASSIGN_OR_RETURN(e.quote.attest, GetB64(*quote, "attest"));
  ASSIGN_OR_RETURN(e.quote.signature, GetB64(*quote, "signature"));
  auto values = quote->find("pcr_values");
  if (values == quote->end() || !values->is_array() || values->size() > 24) {
    return Malformed("pcr_values must be an array of at most 24 values");
  }
  for (const json& v : *values) {
    if (!v.is_string()) return Malformed("pcr_values entry is not a string");
    auto bytes = crypto::Base64Decode(v.get_ref<const std::string&>());
    if (!bytes.ok()) return Malformed("bad base64 in pcr_values");
    e.quote.pcr_values.push_back(std::move(bytes).value());
  }
  ASSIGN_OR_RETURN(const json* certify, GetObject(j, "certify"));
  ASSIGN_OR_RETURN(e.certify.attest, GetB64(*certify, "attest"));
  ASSIGN_OR_RETURN(e.certify.signature, GetB64(*certify, "signature"));
  ASSIGN_OR_RETURN(e.certify.key_public, GetB64(*certify, "key_public"));
  return e;
}

std::string EnrollmentRequestToJson(const EnrollmentRequest& r) {
  json j = {{"version", 1},
            {"ek_certificate", Base64Encode(r.ek_certificate)},
            {"ak_public", Base64Encode(r.ak_public)}};
  return j.dump();
}

StatusOr<EnrollmentRequest> EnrollmentRequestFromJson(std::string_view text) {
  ASSIGN_OR_RETURN(json j, ParseObject(text));
  EnrollmentRequest r;
  ASSIGN_OR_RETURN(r.ek_certificate, GetB64(j, "ek_certificate"));
  ASSIGN_OR_RETURN(r.ak_public, GetB64(j, "ak_public"));
  return r;
}

std::string CredentialChallengeToJson(const CredentialChallenge& c) {
  json j = {{"version", 1},
            {"credential_blob", Base64Encode(c.credential_blob)},
            {"encrypted_secret", Base64Encode(c.encrypted_secret)}};
  return j.dump();
}

StatusOr<CredentialChallenge> CredentialChallengeFromJson(std::string_view text) {
  ASSIGN_OR_RETURN(json j, ParseObject(text));
  CredentialChallenge c;
  ASSIGN_OR_RETURN(c.credential_blob, GetB64(j, "credential_blob"));
  ASSIGN_OR_RETURN(c.encrypted_secret, GetB64(j, "encrypted_secret"));
  return c;
}

}  // namespace vmseal::attest
