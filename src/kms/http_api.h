// The KMS's HTTP adapter (docs/api/kms.yaml) over KmsService.
#ifndef VMSEAL_KMS_HTTP_API_H_
#define VMSEAL_KMS_HTTP_API_H_

#include "kms/kek_rotation.h"
#include "kms/service.h"
#include "net/https_server.h"

namespace vmseal::kms {

// Registers the KMS routes (docs/api/kms.yaml) on `server`.
void RegisterKmsRoutes(KmsService* service, net::HttpsServer* server);
// The customer audit route (GET /v1/images/{tenant}/{image_id}/audit);
// RegisterKmsRoutes registers it.
void RegisterCustomerAuditRoute(KmsService* service, net::HttpsServer* server);

// The operator's KEK rotation routes (kms/kek_rotation.h):
//   GET  /v1/kek                  ring, keys per KEK, rotation state
//   POST /v1/kek/reload {kek_id}  re-read kms.json's KEKs; kek_id = new current
//   POST /v1/kek/rotation {kek_id} start (or report) the re-wrap to kek_id
//   POST /v1/kek/retire {kek_id}  drop a KEK no record names
void RegisterKekRotationRoutes(KekRotation* rotation, net::HttpsServer* server);

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_HTTP_API_H_
