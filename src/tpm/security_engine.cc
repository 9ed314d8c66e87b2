#include "tpm/security_engine.h"

#include <sys/stat.h>
#include <tss2/tss2_mu.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "attest/tpm_format.h"
#include "tpm/internal/esys_util.h"

namespace vmseal::tpm {

using internal::EsysHandle;
using internal::EsysPtr;
using internal::TpmError;

namespace {

constexpr TPM2_HANDLE kEkCertNvIndex = 0x01c00002;  // TCG EK Credential Profile, RSA 2048
constexpr uint16_t kNvChunkBytes = 512;
constexpr int kQuoteAttempts = 3;
constexpr char kBindingPubFile[] = "/binding.pub";    // TPM2B_PUBLIC, marshalled
constexpr char kBindingPrivFile[] = "/binding.priv";  // TPM2B_PRIVATE, marshalled
constexpr char kAkPubFile[] = "/ak.pub";              // TPMT_PUBLIC, marshalled

constexpr TPMA_OBJECT kOrigin =
    TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN;

// A TPM reached without a resource manager (swtpm's socket, /dev/tpm0)
// keeps what an agent killed with SIGKILL had loaded, and a few objects fill
// its slots (TPM_RC_OBJECT_MEMORY on the next CreatePrimary). The agent owns
// its TPM (docs/host.md), so on start it flushes every transient object and
// loaded session it can see; through a resource manager (/dev/tpmrm0) it
// sees none of another client's. Best effort: a handle that will not flush
// is left alone.
void FlushLeftovers(ESYS_CONTEXT* ctx) {
  for (TPM2_HANDLE first : {TPM2_TRANSIENT_FIRST, TPM2_LOADED_SESSION_FIRST}) {
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA* data = nullptr;
    if (Esys_GetCapability(ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES,
                           first, TPM2_MAX_CAP_HANDLES, &more, &data) != TSS2_RC_SUCCESS) {
      continue;
    }
    EsysPtr<TPMS_CAPABILITY_DATA> owned(data);
    const TPML_HANDLE& handles = data->data.handles;
    for (uint32_t i = 0; i < handles.count && i < TPM2_MAX_CAP_HANDLES; ++i) {
      ESYS_TR tr = ESYS_TR_NONE;
      if (Esys_TR_FromTPMPublic(ctx, handles.handle[i], ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                &tr) != TSS2_RC_SUCCESS) {
        continue;
      }
      if (Esys_FlushContext(ctx, tr) != TSS2_RC_SUCCESS) (void)Esys_TR_Close(ctx, &tr);
    }
  }
}

TPM2B_PUBLIC RsaTemplate(TPMA_OBJECT attrs) {
  TPM2B_PUBLIC t;
  std::memset(&t, 0, sizeof(t));
  t.publicArea.type = TPM2_ALG_RSA;
  t.publicArea.nameAlg = TPM2_ALG_SHA256;
  t.publicArea.objectAttributes = attrs;
  t.publicArea.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_NULL;
  t.publicArea.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
  t.publicArea.parameters.rsaDetail.keyBits = 2048;
  t.publicArea.parameters.rsaDetail.exponent = 0;
  return t;
}

TPM2B_PUBLIC SrkTemplate() {
  TPM2B_PUBLIC t = RsaTemplate(kOrigin | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA |
                               TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT);
  auto& sym = t.publicArea.parameters.rsaDetail.symmetric;
  sym.algorithm = TPM2_ALG_AES;
  sym.keyBits.aes = 128;
  sym.mode.aes = TPM2_ALG_CFB;
  return t;
}

TPM2B_PUBLIC SigningTemplate(bool restricted) {
  TPM2B_PUBLIC t = RsaTemplate(kOrigin | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_SIGN_ENCRYPT |
                               (restricted ? TPMA_OBJECT_RESTRICTED : 0));
  t.publicArea.parameters.rsaDetail.scheme.scheme = TPM2_ALG_RSASSA;
  t.publicArea.parameters.rsaDetail.scheme.details.rsassa.hashAlg = TPM2_ALG_SHA256;
  return t;
}

TPM2B_PUBLIC BindingTemplate() {
  TPM2B_PUBLIC t = RsaTemplate(kOrigin | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_DECRYPT);
  t.publicArea.parameters.rsaDetail.scheme.scheme = TPM2_ALG_OAEP;
  t.publicArea.parameters.rsaDetail.scheme.details.oaep.hashAlg = TPM2_ALG_SHA256;
  return t;
}

// TCG EK Credential Profile 2.0, template L-1 (RSA 2048): its public key is
// the one in the EK certificate.
TPM2B_PUBLIC EkTemplate() {
  static constexpr uint8_t kPolicyA[32] = {0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8,
                                           0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
                                           0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64,
                                           0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};
  TPM2B_PUBLIC t = RsaTemplate(kOrigin | TPMA_OBJECT_ADMINWITHPOLICY | TPMA_OBJECT_RESTRICTED |
                               TPMA_OBJECT_DECRYPT);
  t.publicArea.authPolicy.size = sizeof(kPolicyA);
  std::memcpy(t.publicArea.authPolicy.buffer, kPolicyA, sizeof(kPolicyA));
  auto& sym = t.publicArea.parameters.rsaDetail.symmetric;
  sym.algorithm = TPM2_ALG_AES;
  sym.keyBits.aes = 128;
  sym.mode.aes = TPM2_ALG_CFB;
  t.publicArea.unique.rsa.size = 256;  // all zero
  return t;
}

template <typename T, typename F>
StatusOr<Bytes> MarshalWith(const T& value, F marshal) {
  Bytes out(sizeof(T) + 16);
  size_t offset = 0;
  if (marshal(&value, out.data(), out.size(), &offset) != TSS2_RC_SUCCESS) {
    return InternalError("marshal failed");
  }
  out.resize(offset);
  return out;
}

template <typename T, typename F>
StatusOr<T> UnmarshalWith(std::string_view bytes, F unmarshal) {
  T value;
  std::memset(&value, 0, sizeof(value));
  size_t offset = 0;
  if (unmarshal(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), &offset, &value) !=
          TSS2_RC_SUCCESS ||
      offset != bytes.size()) {
    return DataLossError("stored TPM blob is corrupt");
  }
  return value;
}

StatusOr<TPM2B_DATA> ToData(std::span<const uint8_t> bytes, size_t max, const char* what) {
  TPM2B_DATA d;
  std::memset(&d, 0, sizeof(d));
  if (bytes.size() > max || bytes.size() > sizeof(d.buffer)) {
    return InvalidArgumentError(std::string(what) + " too long");
  }
  d.size = static_cast<UINT16>(bytes.size());
  std::memcpy(d.buffer, bytes.data(), bytes.size());
  return d;
}

// The length of a DER SEQUENCE at the start of `b` (NV areas pad the
// certificate), or 0 if it does not start with one.
size_t DerLength(const Bytes& b) {
  if (b.size() < 2 || b[0] != 0x30) return 0;
  if (b[1] < 0x80) return 2 + b[1];
  size_t n = b[1] & 0x7f;
  if (n == 0 || n > 3 || b.size() < 2 + n) return 0;
  size_t len = 0;
  for (size_t i = 0; i < n; ++i) len = (len << 8) | b[2 + i];
  return 2 + n + len;
}

}  // namespace

struct SecurityEngine::Impl {
  Env* env = nullptr;
  std::string state_dir;
  std::string tcti_config;
  internal::TctiPtr tcti;  // destroyed last
  internal::EsysContextPtr esys;
  EsysHandle srk;
  EsysHandle ak;
  EsysHandle binding;  // destroyed first
  TPM2B_PUBLIC binding_pub;
  TPM2B_PRIVATE binding_priv;

  ESYS_CONTEXT* ctx() const { return esys.get(); }

  StatusOr<EsysHandle> CreatePrimary(ESYS_TR hierarchy, const TPM2B_PUBLIC& templ,
                                     EsysPtr<TPM2B_PUBLIC>* out_public) {
    TPM2B_SENSITIVE_CREATE sensitive;
    std::memset(&sensitive, 0, sizeof(sensitive));
    TPM2B_DATA outside;
    std::memset(&outside, 0, sizeof(outside));
    TPML_PCR_SELECTION creation_pcr;
    std::memset(&creation_pcr, 0, sizeof(creation_pcr));
    ESYS_TR handle = ESYS_TR_NONE;
    TPM2B_PUBLIC* pub = nullptr;
    TSS2_RC rc = Esys_CreatePrimary(ctx(), hierarchy, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                    &sensitive, &templ, &outside, &creation_pcr, &handle, &pub,
                                    nullptr, nullptr, nullptr);
    if (rc != TSS2_RC_SUCCESS) return TpmError("CreatePrimary", rc);
    EsysPtr<TPM2B_PUBLIC> owned(pub);
    if (out_public != nullptr) *out_public = std::move(owned);
    return EsysHandle(ctx(), handle);
  }

  // Creates an ordinary key under the SRK; returns its blobs.
  Status CreateUnderSrk(const TPM2B_PUBLIC& templ, TPM2B_PUBLIC* pub_out, TPM2B_PRIVATE* priv_out) {
    TPM2B_SENSITIVE_CREATE sensitive;
    std::memset(&sensitive, 0, sizeof(sensitive));
    TPM2B_DATA outside;
    std::memset(&outside, 0, sizeof(outside));
    TPML_PCR_SELECTION creation_pcr;
    std::memset(&creation_pcr, 0, sizeof(creation_pcr));
    TPM2B_PRIVATE* priv = nullptr;
    TPM2B_PUBLIC* pub = nullptr;
    TSS2_RC rc =
        Esys_Create(ctx(), srk.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive,
                    &templ, &outside, &creation_pcr, &priv, &pub, nullptr, nullptr, nullptr);
    if (rc != TSS2_RC_SUCCESS) return TpmError("Create", rc);
    EsysPtr<TPM2B_PRIVATE> owned_priv(priv);
    EsysPtr<TPM2B_PUBLIC> owned_pub(pub);
    *pub_out = *pub;
    *priv_out = *priv;
    return OkStatus();
  }

  StatusOr<EsysHandle> LoadUnderSrk(const TPM2B_PUBLIC& pub, const TPM2B_PRIVATE& priv) {
    ESYS_TR handle = ESYS_TR_NONE;
    TSS2_RC rc = Esys_Load(ctx(), srk.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &priv,
                           &pub, &handle);
    if (rc != TSS2_RC_SUCCESS) return TpmError("Load", rc);
    return EsysHandle(ctx(), handle);
  }

  Status ReloadBinding() {
    if (binding.valid()) return OkStatus();
    ASSIGN_OR_RETURN(binding, LoadUnderSrk(binding_pub, binding_priv));
    return OkStatus();
  }

  StatusOr<attest::CertifyEvidence> Certify(ESYS_TR object, std::span<const uint8_t> nonce) {
    ASSIGN_OR_RETURN(TPM2B_DATA qualifying, ToData(nonce, attest::kMaxNonceBytes, "nonce"));
    TPMT_SIG_SCHEME scheme;
    std::memset(&scheme, 0, sizeof(scheme));
    scheme.scheme = TPM2_ALG_NULL;
    TPM2B_ATTEST* info = nullptr;
    TPMT_SIGNATURE* sig = nullptr;
    TSS2_RC rc = Esys_Certify(ctx(), object, ak.get(), ESYS_TR_PASSWORD, ESYS_TR_PASSWORD,
                              ESYS_TR_NONE, &qualifying, &scheme, &info, &sig);
    if (rc != TSS2_RC_SUCCESS) return TpmError("Certify", rc);
    EsysPtr<TPM2B_ATTEST> owned_info(info);
    EsysPtr<TPMT_SIGNATURE> owned_sig(sig);
    attest::CertifyEvidence out;
    out.attest.assign(info->attestationData, info->attestationData + info->size);
    ASSIGN_OR_RETURN(out.signature, MarshalWith(*sig, Tss2_MU_TPMT_SIGNATURE_Marshal));
    return out;
  }
};

SecurityEngine::SecurityEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SecurityEngine::~SecurityEngine() = default;

StatusOr<std::unique_ptr<SecurityEngine>> SecurityEngine::Create(
    const SecurityEngineOptions& options) {
  if (options.tcti.empty()) return InvalidArgumentError("TCTI configuration is required");
  if (options.state_dir.empty()) return InvalidArgumentError("TPM state dir is required");
  std::unique_ptr<SecurityEngine> engine(new SecurityEngine(std::make_unique<Impl>()));
  RETURN_IF_ERROR(engine->Init(options));
  return engine;
}

Status SecurityEngine::Reconnect() {
  // Handles of the old connection are dropped without flushing: after a TPM
  // restart they name nothing, and the old socket is dead anyway.
  impl_->binding.Release();
  impl_->ak.Release();
  impl_->srk.Release();
  SecurityEngineOptions options;
  options.tcti = impl_->tcti_config;
  options.state_dir = impl_->state_dir;
  options.env = impl_->env;
  impl_ = std::make_unique<Impl>();
  return Init(options);
}

Status SecurityEngine::Init(const SecurityEngineOptions& options) {
  Impl& m = *impl_;
  m.tcti_config = options.tcti;
  m.env = options.env != nullptr ? options.env : Env::Default();
  m.state_dir = options.state_dir;
  if (mkdir(m.state_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoToStatus(errno, "create TPM state dir", m.state_dir);
  }

  TSS2_TCTI_CONTEXT* tcti = nullptr;
  TSS2_RC rc = Tss2_TctiLdr_Initialize(options.tcti.c_str(), &tcti);
  if (rc != TSS2_RC_SUCCESS) {
    return UnavailableError("cannot open TPM via TCTI \"" + options.tcti +
                            "\": " + Tss2_RC_Decode(rc));
  }
  m.tcti.reset(tcti);
  ESYS_CONTEXT* esys = nullptr;
  rc = Esys_Initialize(&esys, m.tcti.get(), nullptr);
  if (rc != TSS2_RC_SUCCESS) return TpmError("Esys_Initialize", rc);
  m.esys.reset(esys);
  rc = Esys_Startup(m.ctx(), TPM2_SU_CLEAR);
  if (rc != TSS2_RC_SUCCESS && rc != TPM2_RC_INITIALIZE) return TpmError("Startup", rc);
  FlushLeftovers(m.ctx());

  ASSIGN_OR_RETURN(m.srk, m.CreatePrimary(ESYS_TR_RH_OWNER, SrkTemplate(), nullptr));
  EsysPtr<TPM2B_PUBLIC> ak_pub;
  ASSIGN_OR_RETURN(m.ak, m.CreatePrimary(ESYS_TR_RH_ENDORSEMENT, SigningTemplate(true), &ak_pub));
  ASSIGN_OR_RETURN(ak_public_, attest::MarshalPublic(ak_pub->publicArea));

  // The AK is re-derived from the endorsement seed: a different one means the
  // TPM was cleared or replaced, and the stored binding key is useless.
  const std::string ak_path = m.state_dir + kAkPubFile;
  if (m.env->FileExists(ak_path)) {
    ASSIGN_OR_RETURN(std::string stored, ReadFileToString(m.env, ak_path));
    if (stored != crypto::AsStringView(ak_public_)) {
      return FailedPreconditionError("TPM state dir " + m.state_dir +
                                     " belongs to another TPM (AK differs)");
    }
  }

  const std::string pub_path = m.state_dir + kBindingPubFile;
  const std::string priv_path = m.state_dir + kBindingPrivFile;
  if (m.env->FileExists(pub_path) && m.env->FileExists(priv_path)) {
    ASSIGN_OR_RETURN(std::string pub, ReadFileToString(m.env, pub_path));
    ASSIGN_OR_RETURN(std::string priv, ReadFileToString(m.env, priv_path));
    ASSIGN_OR_RETURN(m.binding_pub,
                     UnmarshalWith<TPM2B_PUBLIC>(pub, Tss2_MU_TPM2B_PUBLIC_Unmarshal));
    ASSIGN_OR_RETURN(m.binding_priv,
                     UnmarshalWith<TPM2B_PRIVATE>(priv, Tss2_MU_TPM2B_PRIVATE_Unmarshal));
  } else {
    RETURN_IF_ERROR(m.CreateUnderSrk(BindingTemplate(), &m.binding_pub, &m.binding_priv));
    ASSIGN_OR_RETURN(Bytes pub, MarshalWith(m.binding_pub, Tss2_MU_TPM2B_PUBLIC_Marshal));
    ASSIGN_OR_RETURN(Bytes priv, MarshalWith(m.binding_priv, Tss2_MU_TPM2B_PRIVATE_Marshal));
    // The private blob is encrypted by the SRK, but is kept 0600 anyway.
    // Written first: a crash before the public blob leaves no half pair.
    RETURN_IF_ERROR(WriteStringToFileAtomic(m.env, priv_path, crypto::AsStringView(priv), 0600));
    RETURN_IF_ERROR(WriteStringToFileAtomic(m.env, pub_path, crypto::AsStringView(pub), 0600));
  }
  if (!m.env->FileExists(ak_path)) {
    RETURN_IF_ERROR(
        WriteStringToFileAtomic(m.env, ak_path, crypto::AsStringView(ak_public_), 0600));
  }
  RETURN_IF_ERROR(m.ReloadBinding());
  ASSIGN_OR_RETURN(binding_public_, attest::MarshalPublic(m.binding_pub.publicArea));
  return OkStatus();
}

StatusOr<Bytes> SecurityEngine::EkCertificateOnce() {
  Impl& m = *impl_;
  ESYS_TR nv_tr = ESYS_TR_NONE;
  TSS2_RC rc = Esys_TR_FromTPMPublic(m.ctx(), kEkCertNvIndex, ESYS_TR_NONE, ESYS_TR_NONE,
                                     ESYS_TR_NONE, &nv_tr);
  if (rc != TSS2_RC_SUCCESS) return NotFoundError("TPM has no RSA EK certificate in NV");
  EsysHandle nv(m.ctx(), nv_tr, /*flush=*/false);
  TPM2B_NV_PUBLIC* nv_pub = nullptr;
  rc = Esys_NV_ReadPublic(m.ctx(), nv.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &nv_pub,
                          nullptr);
  if (rc != TSS2_RC_SUCCESS) return TpmError("NV_ReadPublic", rc);
  const uint16_t size = nv_pub->nvPublic.dataSize;
  Esys_Free(nv_pub);
  Bytes out;
  for (uint16_t offset = 0; offset < size;) {
    uint16_t n = std::min<uint16_t>(kNvChunkBytes, static_cast<uint16_t>(size - offset));
    TPM2B_MAX_NV_BUFFER* data = nullptr;
    rc = Esys_NV_Read(m.ctx(), nv.get(), nv.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, n,
                      offset, &data);
    if (rc != TSS2_RC_SUCCESS) return TpmError("NV_Read", rc);
    EsysPtr<TPM2B_MAX_NV_BUFFER> owned(data);
    out.insert(out.end(), data->buffer, data->buffer + data->size);
    offset = static_cast<uint16_t>(offset + n);
  }
  size_t der = DerLength(out);
  if (der == 0 || der > out.size()) return DataLossError("EK certificate in NV is not DER");
  out.resize(der);
  return out;
}

StatusOr<attest::EnrollmentRequest> SecurityEngine::EnrollmentRequest() {
  attest::EnrollmentRequest r;
  ASSIGN_OR_RETURN(r.ek_certificate, EkCertificate());
  r.ak_public = ak_public_;
  return r;
}

StatusOr<SecretBytes> SecurityEngine::ActivateCredentialOnce(
    const attest::CredentialChallenge& challenge) {
  Impl& m = *impl_;
  TPM2B_ID_OBJECT blob;
  TPM2B_ENCRYPTED_SECRET secret;
  std::memset(&blob, 0, sizeof(blob));
  std::memset(&secret, 0, sizeof(secret));
  if (challenge.credential_blob.size() > sizeof(blob.credential) ||
      challenge.encrypted_secret.size() > sizeof(secret.secret)) {
    return InvalidArgumentError("credential challenge too large");
  }
  blob.size = static_cast<UINT16>(challenge.credential_blob.size());
  std::memcpy(blob.credential, challenge.credential_blob.data(), blob.size);
  secret.size = static_cast<UINT16>(challenge.encrypted_secret.size());
  std::memcpy(secret.secret, challenge.encrypted_secret.data(), secret.size);

  // SRK + AK + binding key fill the three transient slots: unload the binding
  // key while the EK is needed, and reload it whatever happens.
  m.binding.Reset();
  struct Reloader {
    Impl& m;
    ~Reloader() { (void)m.ReloadBinding(); }
  } reloader{m};

  ASSIGN_OR_RETURN(EsysHandle ek, m.CreatePrimary(ESYS_TR_RH_ENDORSEMENT, EkTemplate(), nullptr));
  TPMT_SYM_DEF sym;
  std::memset(&sym, 0, sizeof(sym));
  sym.algorithm = TPM2_ALG_NULL;
  ESYS_TR session_tr = ESYS_TR_NONE;
  TSS2_RC rc = Esys_StartAuthSession(m.ctx(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                     ESYS_TR_NONE, ESYS_TR_NONE, nullptr, TPM2_SE_POLICY, &sym,
                                     TPM2_ALG_SHA256, &session_tr);
  if (rc != TSS2_RC_SUCCESS) return TpmError("StartAuthSession(policy)", rc);
  EsysHandle session(m.ctx(), session_tr);
  rc = Esys_TRSess_SetAttributes(m.ctx(), session.get(), TPMA_SESSION_CONTINUESESSION, 0xff);
  if (rc != TSS2_RC_SUCCESS) return TpmError("TRSess_SetAttributes", rc);
  TPM2B_TIMEOUT* timeout = nullptr;
  TPMT_TK_AUTH* ticket = nullptr;
  rc = Esys_PolicySecret(m.ctx(), ESYS_TR_RH_ENDORSEMENT, session.get(), ESYS_TR_PASSWORD,
                         ESYS_TR_NONE, ESYS_TR_NONE, nullptr, nullptr, nullptr, 0, &timeout,
                         &ticket);
  Esys_Free(timeout);
  Esys_Free(ticket);
  if (rc != TSS2_RC_SUCCESS) return TpmError("PolicySecret(endorsement)", rc);
  TPM2B_DIGEST* cert_info = nullptr;
  rc = Esys_ActivateCredential(m.ctx(), m.ak.get(), ek.get(), ESYS_TR_PASSWORD, session.get(),
                               ESYS_TR_NONE, &blob, &secret, &cert_info);
  if (rc != TSS2_RC_SUCCESS) {
    return PermissionDeniedError(std::string("activate credential failed: ") + Tss2_RC_Decode(rc));
  }
  SecretBytes out(std::span<const uint8_t>(cert_info->buffer, cert_info->size));
  WipeBytes(std::span<uint8_t>(cert_info->buffer, cert_info->size));
  Esys_Free(cert_info);
  return out;
}

StatusOr<std::vector<Bytes>> SecurityEngine::ReadPcrsOnce(const std::vector<uint32_t>& pcrs) {
  Impl& m = *impl_;
  ASSIGN_OR_RETURN(TPML_PCR_SELECTION remaining, attest::MakePcrSelection(pcrs));
  std::vector<uint32_t> wanted = pcrs;
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
  std::vector<Bytes> values(24);
  // PCR_Read returns at most 8 digests per call: repeat with what is left.
  while (true) {
    ASSIGN_OR_RETURN(std::vector<uint32_t> left, attest::PcrIndices(remaining));
    if (left.empty()) break;
    UINT32 counter = 0;
    TPML_PCR_SELECTION* sel_out = nullptr;
    TPML_DIGEST* digests = nullptr;
    TSS2_RC rc = Esys_PCR_Read(m.ctx(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &remaining,
                               &counter, &sel_out, &digests);
    if (rc != TSS2_RC_SUCCESS) return TpmError("PCR_Read", rc);
    EsysPtr<TPML_PCR_SELECTION> owned_sel(sel_out);
    EsysPtr<TPML_DIGEST> owned_digests(digests);
    auto got = attest::PcrIndices(*sel_out);
    if (!got.ok() || got->empty() || got->size() != digests->count) {
      return InternalError("TPM has no SHA-256 bank for the requested PCRs");
    }
    for (size_t i = 0; i < got->size(); ++i) {
      uint32_t pcr = (*got)[i];
      values[pcr] = attest::B(digests->digests[i]);
      remaining.pcrSelections[0].pcrSelect[pcr / 8] &= static_cast<uint8_t>(~(1u << (pcr % 8)));
    }
  }
  std::vector<Bytes> out;
  for (uint32_t pcr : wanted) out.push_back(std::move(values[pcr]));
  return out;
}

StatusOr<attest::QuoteEvidence> SecurityEngine::QuoteOnce(std::span<const uint8_t> nonce,
                                                          const std::vector<uint32_t>& pcrs) {
  Impl& m = *impl_;
  ASSIGN_OR_RETURN(TPML_PCR_SELECTION selection, attest::MakePcrSelection(pcrs));
  ASSIGN_OR_RETURN(TPM2B_DATA qualifying, ToData(nonce, attest::kMaxNonceBytes, "nonce"));
  TPMT_SIG_SCHEME scheme;
  std::memset(&scheme, 0, sizeof(scheme));
  scheme.scheme = TPM2_ALG_NULL;
  for (int attempt = 0; attempt < kQuoteAttempts; ++attempt) {
    attest::QuoteEvidence out;
    ASSIGN_OR_RETURN(out.pcr_values, ReadPcrsOnce(pcrs));
    TPM2B_ATTEST* quoted = nullptr;
    TPMT_SIGNATURE* sig = nullptr;
    TSS2_RC rc = Esys_Quote(m.ctx(), m.ak.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                            &qualifying, &scheme, &selection, &quoted, &sig);
    if (rc != TSS2_RC_SUCCESS) return TpmError("Quote", rc);
    EsysPtr<TPM2B_ATTEST> owned_quoted(quoted);
    EsysPtr<TPMT_SIGNATURE> owned_sig(sig);
    out.attest.assign(quoted->attestationData, quoted->attestationData + quoted->size);
    ASSIGN_OR_RETURN(out.signature, MarshalWith(*sig, Tss2_MU_TPMT_SIGNATURE_Marshal));
    // A PCR extended between the read and the quote: read and quote again.
    ASSIGN_OR_RETURN(TPMS_ATTEST parsed, attest::ParseAttest(out.attest, attest::kAttestTypeQuote));
    crypto::Sha256Hasher hasher;
    for (const Bytes& v : out.pcr_values) hasher.Update(v);
    crypto::Sha256Digest digest = hasher.Finish();
    const TPM2B_DIGEST& d = parsed.attested.quote.pcrDigest;
    if (d.size == digest.size() && std::equal(digest.begin(), digest.end(), d.buffer)) {
      return out;
    }
  }
  return AbortedError("PCRs kept changing while quoting");
}

StatusOr<attest::CertifyEvidence> SecurityEngine::CertifyBindingKeyOnce(
    std::span<const uint8_t> nonce) {
  Impl& m = *impl_;
  RETURN_IF_ERROR(m.ReloadBinding());
  ASSIGN_OR_RETURN(attest::CertifyEvidence out, m.Certify(m.binding.get(), nonce));
  out.key_public = binding_public_;
  return out;
}

StatusOr<attest::Evidence> SecurityEngine::Attest(std::span<const uint8_t> nonce,
                                                  const std::vector<uint32_t>& pcrs) {
  return WithReconnect([&] { return AttestOnce(nonce, pcrs); });
}

StatusOr<attest::Evidence> SecurityEngine::AttestOnce(std::span<const uint8_t> nonce,
                                                      const std::vector<uint32_t>& pcrs) {
  attest::Evidence e;
  e.nonce.assign(nonce.begin(), nonce.end());
  ASSIGN_OR_RETURN(e.quote, QuoteOnce(nonce, pcrs));
  ASSIGN_OR_RETURN(e.certify, CertifyBindingKeyOnce(nonce));
  e.pcr_selection = pcrs;
  std::sort(e.pcr_selection.begin(), e.pcr_selection.end());
  e.pcr_selection.erase(std::unique(e.pcr_selection.begin(), e.pcr_selection.end()),
                        e.pcr_selection.end());
  return e;
}

Status SecurityEngine::PcrExtend(uint32_t pcr, std::span<const uint8_t> digest) {
  if (pcr > attest::kMaxPcrIndex) return InvalidArgumentError("PCR index out of range");
  if (digest.size() != crypto::kSha256Bytes) return InvalidArgumentError("digest must be 32 bytes");
  TPML_DIGEST_VALUES values;
  std::memset(&values, 0, sizeof(values));
  values.count = 1;
  values.digests[0].hashAlg = TPM2_ALG_SHA256;
  std::memcpy(values.digests[0].digest.sha256, digest.data(), digest.size());
  TSS2_RC rc = Esys_PCR_Extend(impl_->ctx(), ESYS_TR_PCR0 + pcr, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                               ESYS_TR_NONE, &values);
  if (rc != TSS2_RC_SUCCESS) return TpmError("PCR_Extend", rc);
  return OkStatus();
}

StatusOr<SecretBytes> SecurityEngine::DecryptOnce(std::span<const uint8_t> ciphertext,
                                                  std::span<const uint8_t> label) {
  Impl& m = *impl_;
  TPM2B_PUBLIC_KEY_RSA cipher;
  std::memset(&cipher, 0, sizeof(cipher));
  if (ciphertext.size() != attest::kRsaKeyBits / 8) {
    return InvalidArgumentError("ciphertext must be 256 bytes");
  }
  if (label.empty() || label.back() != 0) {
    return InvalidArgumentError("OAEP label must end with a zero byte");
  }
  ASSIGN_OR_RETURN(TPM2B_DATA tpm_label, ToData(label, sizeof(TPM2B_DATA::buffer), "label"));
  cipher.size = static_cast<UINT16>(ciphertext.size());
  std::memcpy(cipher.buffer, ciphertext.data(), ciphertext.size());
  RETURN_IF_ERROR(m.ReloadBinding());

  // HMAC session salted to the SRK: the salt is RSA-encrypted to the SRK, so
  // the session key (and the response encrypted under it) is unknown to
  // anyone watching the TCTI.
  TPMT_SYM_DEF sym;
  std::memset(&sym, 0, sizeof(sym));
  sym.algorithm = TPM2_ALG_AES;
  sym.keyBits.aes = 128;
  sym.mode.aes = TPM2_ALG_CFB;
  ESYS_TR session_tr = ESYS_TR_NONE;
  TSS2_RC rc = Esys_StartAuthSession(m.ctx(), m.srk.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                     ESYS_TR_NONE, nullptr, TPM2_SE_HMAC, &sym, TPM2_ALG_SHA256,
                                     &session_tr);
  if (rc != TSS2_RC_SUCCESS) return TpmError("StartAuthSession(salted)", rc);
  EsysHandle session(m.ctx(), session_tr);
  rc = Esys_TRSess_SetAttributes(m.ctx(), session.get(),
                                 TPMA_SESSION_CONTINUESESSION | TPMA_SESSION_ENCRYPT, 0xff);
  if (rc != TSS2_RC_SUCCESS) return TpmError("TRSess_SetAttributes", rc);
  TPMT_RSA_DECRYPT scheme;
  std::memset(&scheme, 0, sizeof(scheme));
  scheme.scheme = TPM2_ALG_OAEP;
  scheme.details.oaep.hashAlg = TPM2_ALG_SHA256;
  TPM2B_PUBLIC_KEY_RSA* message = nullptr;
  rc = Esys_RSA_Decrypt(m.ctx(), m.binding.get(), session.get(), ESYS_TR_NONE, ESYS_TR_NONE,
                        &cipher, &scheme, &tpm_label, &message);
  if (rc != TSS2_RC_SUCCESS) {
    if (internal::TpmLostState(rc)) return TpmError("RSA_Decrypt", rc);
    return PermissionDeniedError("decryption failed");
  }
  SecretBytes out(std::span<const uint8_t>(message->buffer, message->size));
  WipeBytes(std::span<uint8_t>(message->buffer, message->size));
  Esys_Free(message);
  return out;
}

StatusOr<attest::CertifyEvidence> SecurityEngine::CertifySigningKeyForTesting(
    std::span<const uint8_t> nonce) {
  Impl& m = *impl_;
  TPM2B_PUBLIC pub;
  TPM2B_PRIVATE priv;
  // TPM2_Create needs a free object slot too.
  m.binding.Reset();
  struct Reloader {
    Impl& m;
    ~Reloader() { (void)m.ReloadBinding(); }
  } reloader{m};
  RETURN_IF_ERROR(m.CreateUnderSrk(SigningTemplate(false), &pub, &priv));
  ASSIGN_OR_RETURN(EsysHandle key, m.LoadUnderSrk(pub, priv));
  ASSIGN_OR_RETURN(attest::CertifyEvidence out, m.Certify(key.get(), nonce));
  ASSIGN_OR_RETURN(out.key_public, attest::MarshalPublic(pub.publicArea));
  return out;
}

StatusOr<Bytes> SecurityEngine::EkCertificate() {
  return WithReconnect([&] { return EkCertificateOnce(); });
}

StatusOr<SecretBytes> SecurityEngine::ActivateCredential(
    const attest::CredentialChallenge& challenge) {
  return WithReconnect([&] { return ActivateCredentialOnce(challenge); });
}

StatusOr<std::vector<Bytes>> SecurityEngine::ReadPcrs(const std::vector<uint32_t>& pcrs) {
  return WithReconnect([&] { return ReadPcrsOnce(pcrs); });
}

StatusOr<attest::QuoteEvidence> SecurityEngine::Quote(std::span<const uint8_t> nonce,
                                                      const std::vector<uint32_t>& pcrs) {
  return WithReconnect([&] { return QuoteOnce(nonce, pcrs); });
}

StatusOr<attest::CertifyEvidence> SecurityEngine::CertifyBindingKey(
    std::span<const uint8_t> nonce) {
  return WithReconnect([&] { return CertifyBindingKeyOnce(nonce); });
}

StatusOr<SecretBytes> SecurityEngine::Decrypt(std::span<const uint8_t> ciphertext,
                                              std::span<const uint8_t> label) {
  return WithReconnect([&] { return DecryptOnce(ciphertext, label); });
}

}  // namespace vmseal::tpm
