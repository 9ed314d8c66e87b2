// The production KmsApi: HTTPS (TLS 1.3) to the KMS with the host's mTLS
// identity (a certificate with OU "host" and CN = host id, issued by
// `vmseal kms issue-identity`). Routes and JSON: docs/api/kms.yaml.
// Denials arrive as PERMISSION_DENIED whose message starts with the KMS's
// machine-readable reason ("pcr_policy: ...").
#ifndef VMSEAL_HOST_HTTPS_KMS_CLIENT_H_
#define VMSEAL_HOST_HTTPS_KMS_CLIENT_H_

#include <memory>
#include <string>

#include "base/status.h"
#include "host/kms_api.h"

namespace vmseal::host {

struct HttpsKmsClientOptions {
  // "https://host:port" (no path).
  std::string url;
  // PEM files: the KMS CA (server trust anchor), the host's certificate and key.
  std::string ca_cert_file;
  std::string cert_file;
  std::string key_file;
  // Must equal the certificate's CN.
  std::string host_id;
  // Per-request timeout. Default 10 s.
  int timeout_seconds = 10;
};

StatusOr<std::unique_ptr<KmsApi>> NewHttpsKmsClient(const HttpsKmsClientOptions& options);

}  // namespace vmseal::host

#endif  // VMSEAL_HOST_HTTPS_KMS_CLIENT_H_
