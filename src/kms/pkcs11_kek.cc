#include "kms/pkcs11_kek.h"

#include <dlfcn.h>
#include <p11-kit/pkcs11.h>

#include <cstring>
#include <mutex>
#include <vector>

#include "crypto/primitives.h"

namespace vmseal::kms {
namespace {

std::string RvText(CK_RV rv) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "CKR 0x%lx", static_cast<unsigned long>(rv));
  return buf;
}

Status P11Error(const char* what, CK_RV rv) {
  if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE) {
    return PermissionDeniedError(std::string("pkcs11 ") + what + ": PIN refused");
  }
  return UnavailableError(std::string("pkcs11 ") + what + " failed: " + RvText(rv));
}

struct DlCloser {
  void operator()(void* h) const {
    if (h != nullptr) ::dlclose(h);
  }
};

// Owns the module, the session and the login; one operation at a time.
class Pkcs11Kek : public KeyEncryptionKey {
 public:
  ~Pkcs11Kek() override {
    if (fns_ != nullptr) {
      if (session_ != CK_INVALID_HANDLE) {
        fns_->C_Logout(session_);
        fns_->C_CloseSession(session_);
      }
      if (initialized_) fns_->C_Finalize(nullptr);
    }
  }

  static StatusOr<std::unique_ptr<Pkcs11Kek>> Open(const Pkcs11KekOptions& o) {
    std::unique_ptr<Pkcs11Kek> k(new Pkcs11Kek());
    k->module_.reset(::dlopen(o.module_path.c_str(), RTLD_NOW | RTLD_LOCAL));
    if (!k->module_) return NotFoundError("pkcs11: cannot load module " + o.module_path);
    auto get_list = reinterpret_cast<CK_C_GetFunctionList>(::dlsym(k->module_.get(), "C_GetFunctionList"));
    if (get_list == nullptr) return InvalidArgumentError("pkcs11: " + o.module_path + " has no C_GetFunctionList");
    CK_RV rv = get_list(&k->fns_);
    if (rv != CKR_OK) return P11Error("C_GetFunctionList", rv);
    CK_C_INITIALIZE_ARGS init{};
    init.flags = CKF_OS_LOCKING_OK;
    rv = k->fns_->C_Initialize(&init);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) return P11Error("C_Initialize", rv);
    k->initialized_ = rv == CKR_OK;

    CK_ULONG count = 0;
    rv = k->fns_->C_GetSlotList(CK_TRUE, nullptr, &count);
    if (rv != CKR_OK) return P11Error("C_GetSlotList", rv);
    std::vector<CK_SLOT_ID> slots(count);
    rv = k->fns_->C_GetSlotList(CK_TRUE, slots.data(), &count);
    if (rv != CKR_OK) return P11Error("C_GetSlotList", rv);
    CK_SLOT_ID slot = 0;
    bool found = false;
    for (CK_ULONG i = 0; i < count && !found; ++i) {
      CK_TOKEN_INFO info;
      if (k->fns_->C_GetTokenInfo(slots[i], &info) != CKR_OK) continue;
      std::string label(reinterpret_cast<const char*>(info.label), sizeof(info.label));
      while (!label.empty() && label.back() == ' ') label.pop_back();
      if (label == o.token_label) {
        slot = slots[i];
        found = true;
      }
    }
    if (!found) return NotFoundError("pkcs11: no token labelled \"" + o.token_label + "\"");
    rv = k->fns_->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr,
                                &k->session_);
    if (rv != CKR_OK) return P11Error("C_OpenSession", rv);
    rv = k->fns_->C_Login(k->session_, CKU_USER, const_cast<CK_UTF8CHAR*>(o.pin.UnsafeData()),
                          o.pin.size());
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) return P11Error("C_Login", rv);
    RETURN_IF_ERROR(k->FindOrCreateKey(o));
    k->id_ = "pkcs11:" + o.token_label + "/" + o.key_label;
    return k;
  }

  const std::string& id() const override { return id_; }

  StatusOr<std::string> Wrap(const SecretBytes& plaintext, std::string_view aad) const override {
    crypto::Bytes nonce = crypto::RandomBytes(kWrapNonceBytes);
    CK_GCM_PARAMS params = Params(nonce.data(), aad);
    CK_MECHANISM mech{CKM_AES_GCM, &params, sizeof(params)};
    std::lock_guard<std::mutex> lock(mu_);
    CK_RV rv = fns_->C_EncryptInit(session_, &mech, key_);
    if (rv != CKR_OK) return P11Error("C_EncryptInit", rv);
    CK_ULONG out_len = plaintext.size() + kWrapTagBytes;
    std::string out(1 + kWrapNonceBytes + out_len, '\0');
    out[0] = static_cast<char>(kWrappedKeyVersion);
    std::memcpy(out.data() + 1, nonce.data(), kWrapNonceBytes);
    rv = fns_->C_Encrypt(session_, const_cast<CK_BYTE*>(plaintext.UnsafeData()), plaintext.size(),
                         reinterpret_cast<CK_BYTE*>(out.data()) + 1 + kWrapNonceBytes, &out_len);
    if (rv != CKR_OK) return P11Error("C_Encrypt", rv);
    if (out_len != plaintext.size() + kWrapTagBytes) return InternalError("pkcs11: unexpected GCM output length");
    return out;
  }

  StatusOr<SecretBytes> Unwrap(std::string_view wrapped, std::string_view aad) const override {
    if (wrapped.size() < 1 + kWrapNonceBytes + kWrapTagBytes) return InvalidArgumentError("wrapped key too short");
    if (static_cast<uint8_t>(wrapped[0]) != kWrappedKeyVersion) {
      return InvalidArgumentError("wrapped key: unknown version");
    }
    const auto* nonce = reinterpret_cast<const uint8_t*>(wrapped.data()) + 1;
    CK_GCM_PARAMS params = Params(nonce, aad);
    CK_MECHANISM mech{CKM_AES_GCM, &params, sizeof(params)};
    const CK_ULONG in_len = wrapped.size() - 1 - kWrapNonceBytes;
    std::lock_guard<std::mutex> lock(mu_);
    CK_RV rv = fns_->C_DecryptInit(session_, &mech, key_);
    if (rv != CKR_OK) return P11Error("C_DecryptInit", rv);
    SecretBytes out(in_len);  // >= plaintext length
    CK_ULONG out_len = in_len;
    rv = fns_->C_Decrypt(session_,
                         const_cast<CK_BYTE*>(reinterpret_cast<const CK_BYTE*>(wrapped.data())) + 1 +
                             kWrapNonceBytes,
                         in_len, out.UnsafeMutableData(), &out_len);
    if (rv != CKR_OK) return UnauthenticatedError("decryption failed");
    SecretBytes exact(out.UnsafeSpan().first(out_len));
    return exact;
  }

 private:
  Pkcs11Kek() = default;

  static CK_GCM_PARAMS Params(const uint8_t* nonce, std::string_view aad) {
    CK_GCM_PARAMS p{};
    p.pIv = const_cast<CK_BYTE*>(nonce);
    p.ulIvLen = kWrapNonceBytes;
    p.ulIvBits = kWrapNonceBytes * 8;
    p.pAAD = const_cast<CK_BYTE*>(reinterpret_cast<const CK_BYTE*>(aad.data()));
    p.ulAADLen = aad.size();
    p.ulTagBits = kWrapTagBytes * 8;
    return p;
  }

  Status FindOrCreateKey(const Pkcs11KekOptions& o) {
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE type = CKK_AES;
    std::string label = o.key_label;
    CK_ATTRIBUTE find[] = {{CKA_CLASS, &cls, sizeof(cls)},
                           {CKA_KEY_TYPE, &type, sizeof(type)},
                           {CKA_LABEL, label.data(), label.size()}};
    CK_RV rv = fns_->C_FindObjectsInit(session_, find, 3);
    if (rv != CKR_OK) return P11Error("C_FindObjectsInit", rv);
    CK_OBJECT_HANDLE handles[2];
    CK_ULONG n = 0;
    rv = fns_->C_FindObjects(session_, handles, 2, &n);
    fns_->C_FindObjectsFinal(session_);
    if (rv != CKR_OK) return P11Error("C_FindObjects", rv);
    if (n > 1) return FailedPreconditionError("pkcs11: several keys labelled " + o.key_label);
    if (n == 1) {
      key_ = handles[0];
      return OkStatus();
    }
    if (!o.create_if_missing) return NotFoundError("pkcs11: no AES key labelled " + o.key_label);
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG len = kKekBytes;
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)},
                           {CKA_KEY_TYPE, &type, sizeof(type)},
                           {CKA_LABEL, label.data(), label.size()},
                           {CKA_VALUE_LEN, &len, sizeof(len)},
                           {CKA_TOKEN, &yes, sizeof(yes)},
                           {CKA_PRIVATE, &yes, sizeof(yes)},
                           {CKA_SENSITIVE, &yes, sizeof(yes)},
                           {CKA_EXTRACTABLE, &no, sizeof(no)},
                           {CKA_ENCRYPT, &yes, sizeof(yes)},
                           {CKA_DECRYPT, &yes, sizeof(yes)}};
    CK_MECHANISM gen{CKM_AES_KEY_GEN, nullptr, 0};
    rv = fns_->C_GenerateKey(session_, &gen, tmpl, std::size(tmpl), &key_);
    if (rv != CKR_OK) return P11Error("C_GenerateKey", rv);
    return OkStatus();
  }

  std::unique_ptr<void, DlCloser> module_;
  CK_FUNCTION_LIST_PTR fns_ = nullptr;
  bool initialized_ = false;
  CK_SESSION_HANDLE session_ = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE key_ = CK_INVALID_HANDLE;
  std::string id_;
  mutable std::mutex mu_;
};

}  // namespace

StatusOr<std::unique_ptr<KeyEncryptionKey>> OpenPkcs11Kek(const Pkcs11KekOptions& options) {
  if (options.module_path.empty() || options.token_label.empty()) {
    return InvalidArgumentError("pkcs11: module path and token label are required");
  }
  ASSIGN_OR_RETURN(auto kek, Pkcs11Kek::Open(options));
  return std::unique_ptr<KeyEncryptionKey>(std::move(kek));
}

}  // namespace vmseal::kms
