#include "cli/customer_cert.h"

#include <utility>

#include "base/env.h"
#include "cli/commands.h"
#include "cli/portal_http.h"

namespace vmseal::cli {
namespace {

using json = nlohmann::json;


// A JSON integer field, or `fallback` when absent or not an integer.
int64_t IntegerOr(const json& j, const char* field, int64_t fallback) {
  auto it = j.find(field);
  return it != j.end() && it->is_number_integer() ? it->get<int64_t>() : fallback;
}

// A JSON string field, or "" when absent or not a string (json::value would
// throw on a field of another type: the reply is the portal's, untrusted).
std::string StringOr(const json& j, const char* field) {
  auto it = j.find(field);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace

StatusOr<VerifiedCustomerCert> VerifyCustomerKeyReply(const json& reply,
                                                      const std::vector<crypto::Certificate>& roots,
                                                      const CustomerCertNames& names) {
  auto untrusted = [&names](const std::string& why) { return DataLossError(names.reason + ": " + why); };
  if (!reply.is_object()) return untrusted(names.portal + " sent no key object");
  ASSIGN_OR_RETURN(crypto::Certificate cert, crypto::Certificate::FromPem(StringOr(reply, "cert_pem")));
  Status chain = crypto::VerifyCertificateChain(cert, roots);
  if (!chain.ok()) {
    return untrusted(names.certificate + " does not chain to " + names.ca + ": " + chain.message());
  }
  ASSIGN_OR_RETURN(crypto::PublicKey certified, cert.GetPublicKey());
  auto claimed = crypto::PublicKey::FromPem(StringOr(reply, "public_key_pem"));
  if (!claimed.ok() || claimed->KeyId() != certified.KeyId()) {
    return untrusted("the certificate certifies another key than " + names.portal + " names");
  }
  const std::string key_id = StringOr(reply, "key_id");
  if (key_id.empty() || cert.SubjectCommonName() != key_id) {
    return untrusted("the certificate names key " + cert.SubjectCommonName() + ", not " + key_id);
  }
  std::string customer_id = StringOr(reply, "customer_id");
  if (customer_id.empty()) return untrusted(names.portal + " named no customer id");
  // The version (kms/key_versions.h): the certificate's is the one listed,
  // and the portal holds back no newer one.
  if (reply.contains("version") && !reply["version"].is_number_integer()) {
    return untrusted(names.portal + " sent a key version that is not an integer");
  }
  const int64_t listed = IntegerOr(reply, "version", 1);
  ASSIGN_OR_RETURN(uint64_t version, KeyVersionOfCertificate(cert.ToPem()));
  if (static_cast<int64_t>(version) != listed) {
    return untrusted("the certificate is for key version " + std::to_string(version) + ", " + names.portal +
                     " says " + std::to_string(listed));
  }
  auto versions = reply.find("versions");
  if (versions != reply.end() && versions->is_array()) {
    for (const json& v : *versions) {
      const int64_t other = v.is_object() ? IntegerOr(v, "version", 0) : 0;
      if (other > listed) {
        return untrusted(names.portal + " served key version " + std::to_string(listed) + " but version " +
                         std::to_string(other) + " exists");
      }
    }
  }
  return VerifiedCustomerCert{std::move(cert), std::move(certified), std::move(customer_id), key_id, version};
}

StatusOr<VerifiedCustomerCert> FetchVerifiedCustomerCert(httplib::Client& portal, const httplib::Headers& auth,
                                                         const std::vector<crypto::Certificate>& roots,
                                                         const std::string& what,
                                                         const CustomerCertNames& names) {
  ASSIGN_OR_RETURN(json reply, CheckReply(portal.Get("/v1/customer/key", auth), what));
  return VerifyCustomerKeyReply(reply, roots, names);
}

StatusOr<std::vector<crypto::Certificate>> LoadPinnedCa(const std::string& path) {
  ASSIGN_OR_RETURN(std::string pem, ReadFileToString(Env::Default(), path));
  return crypto::Certificate::ParsePemBundle(pem);
}

}  // namespace vmseal::cli
