// The KMS's HTTP adapter (docs/api/kms.yaml) over KmsService.
#ifndef VMSEAL_KMS_HTTP_API_H_
#define VMSEAL_KMS_HTTP_API_H_

#include "kms/service.h"
#include "net/https_server.h"

namespace vmseal::kms {

// Registers the KMS routes (docs/api/kms.yaml) on `server`.
void RegisterKmsRoutes(KmsService* service, net::HttpsServer* server);
// The customer audit route (GET /v1/images/{tenant}/{image_id}/audit);
// RegisterKmsRoutes registers it.
void RegisterCustomerAuditRoute(KmsService* service, net::HttpsServer* server);

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_HTTP_API_H_
