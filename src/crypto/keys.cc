#include "crypto/keys.h"

#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace vmseal::crypto {
namespace {

constexpr size_t kMaxKeyFileBytes = 1 << 20;
constexpr size_t kX25519Bytes = 32;

// The raw public value of an X25519 key (public or private); empty on error.
Bytes RawX25519PublicOf(EVP_PKEY* pkey) {
  Bytes out(kX25519Bytes);
  size_t len = out.size();
  if (EVP_PKEY_get_raw_public_key(pkey, out.data(), &len) != 1 || len != kX25519Bytes) return {};
  return out;
}

using OsslParamBldPtr = SslPtr<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>;
using OsslParamPtr = SslPtr<OSSL_PARAM, OSSL_PARAM_free>;

// Classifies an OpenSSL key; INVALID_ARGUMENT for anything vmseal does not use.
StatusOr<KeyType> TypeOf(EVP_PKEY* pkey) {
  switch (EVP_PKEY_get_base_id(pkey)) {
    case EVP_PKEY_RSA: {
      int bits = EVP_PKEY_get_bits(pkey);
      if (bits == 2048) return KeyType::kRsa2048;
      if (bits == 3072) return KeyType::kRsa3072;
      return InvalidArgumentError("unsupported RSA key size " + std::to_string(bits) +
                                  " bits (want 2048 or 3072)");
    }
    case EVP_PKEY_X25519:
      return KeyType::kX25519;
    case EVP_PKEY_EC: {
      char group[64] = {0};
      size_t len = 0;
      if (EVP_PKEY_get_group_name(pkey, group, sizeof(group), &len) == 1 &&
          (std::strcmp(group, "prime256v1") == 0 || std::strcmp(group, "P-256") == 0)) {
        return KeyType::kEcP256;
      }
      return InvalidArgumentError("unsupported EC curve (want P-256)");
    }
    default:
      return InvalidArgumentError("unsupported key type");
  }
}

// Reads a BIO's memory into a string.
std::string BioToString(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);  // NOLINT(runtime/int)
  return std::string(data, len > 0 ? static_cast<size_t>(len) : 0);
}

}  // namespace

std::string_view KeyTypeName(KeyType type) {
  switch (type) {
    case KeyType::kRsa2048: return "rsa2048";
    case KeyType::kRsa3072: return "rsa3072";
    case KeyType::kX25519: return "x25519";
    case KeyType::kEcP256: return "p256";
  }
  return "unknown";
}

StatusOr<KeyType> ParseKeyType(std::string_view name) {
  for (KeyType t : {KeyType::kRsa2048, KeyType::kRsa3072, KeyType::kX25519, KeyType::kEcP256}) {
    if (name == KeyTypeName(t)) return t;
  }
  return InvalidArgumentError("unknown key type \"" + std::string(name) +
                              "\" (want rsa3072, rsa2048, x25519 or p256)");
}

// ---------------------------------------------------------------- PublicKey

StatusOr<PublicKey> PublicKey::FromEvpPkey(EVP_PKEY* pkey) {
  if (pkey == nullptr) return InvalidArgumentError("no public key");
  ASSIGN_OR_RETURN(KeyType type, TypeOf(pkey));
  // Keep only the public half, so a PublicKey never holds private material.
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(pkey, &der);
  if (len <= 0) return SslError("encode public key");
  const unsigned char* p = der;
  EvpPkeyPtr pub(d2i_PUBKEY(nullptr, &p, len));
  OPENSSL_free(der);
  if (!pub) return SslError("decode public key");
  return PublicKey(std::move(pub), type);
}

StatusOr<PublicKey> PublicKey::FromPem(std::string_view pem) {
  if (pem.size() > kMaxKeyFileBytes) return InvalidArgumentError("public key PEM too large");
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return SslError("BIO_new_mem_buf");
  EvpPkeyPtr pkey(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (!pkey) {
    ERR_clear_error();
    return InvalidArgumentError("not a PEM public key (want BEGIN PUBLIC KEY)");
  }
  ASSIGN_OR_RETURN(KeyType type, TypeOf(pkey.get()));
  return PublicKey(std::move(pkey), type);
}

StatusOr<PublicKey> PublicKey::FromDer(std::span<const uint8_t> der) {
  const unsigned char* p = der.data();
  EvpPkeyPtr pkey(d2i_PUBKEY(nullptr, &p, static_cast<long>(der.size())));  // NOLINT
  if (!pkey || p != der.data() + der.size()) {
    ERR_clear_error();
    return InvalidArgumentError("not a DER SubjectPublicKeyInfo");
  }
  ASSIGN_OR_RETURN(KeyType type, TypeOf(pkey.get()));
  return PublicKey(std::move(pkey), type);
}

StatusOr<PublicKey> PublicKey::FromRsaModulus(std::span<const uint8_t> modulus,
                                              uint64_t exponent) {
  if (modulus.size() != 256 && modulus.size() != 384) {
    return InvalidArgumentError("RSA modulus must be 2048 or 3072 bits");
  }
  if (modulus[0] < 0x80) return InvalidArgumentError("RSA modulus has leading zero bits");
  if (exponent < 3 || exponent % 2 == 0) return InvalidArgumentError("bad RSA public exponent");
  BignumPtr n(BN_bin2bn(modulus.data(), static_cast<int>(modulus.size()), nullptr));
  BignumPtr e(BN_new());
  if (!n || !e || BN_set_word(e.get(), exponent) != 1) return SslError("BN");
  OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) != 1) {
    return SslError("OSSL_PARAM_BLD");
  }
  OsslParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1) {
    return SslError("EVP_PKEY_fromdata_init");
  }
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    ERR_clear_error();
    return InvalidArgumentError("invalid RSA public key");
  }
  EvpPkeyPtr pkey(raw);
  ASSIGN_OR_RETURN(KeyType type, TypeOf(pkey.get()));
  return PublicKey(std::move(pkey), type);
}

PublicKey::PublicKey(const PublicKey& other) : type_(other.type_) {
  EVP_PKEY_up_ref(other.pkey_.get());
  pkey_.reset(other.pkey_.get());
}

PublicKey& PublicKey::operator=(const PublicKey& other) {
  if (this != &other) {
    EVP_PKEY_up_ref(other.pkey_.get());
    pkey_.reset(other.pkey_.get());
    type_ = other.type_;
  }
  return *this;
}

std::string PublicKey::ToPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), pkey_.get()) != 1) return "";
  return BioToString(bio.get());
}

Bytes PublicKey::ToDer() const {
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(pkey_.get(), &der);
  if (len <= 0) return {};
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

std::string PublicKey::KeyId() const {
  Sha256Digest d = Sha256(ToDer());
  return HexEncode(d);
}

StatusOr<std::string> KeyIdOfPem(std::string_view pem) {
  if (pem.size() > kMaxKeyFileBytes) return InvalidArgumentError("public key PEM too large");
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return SslError("BIO_new_mem_buf");
  char* name = nullptr;
  char* header = nullptr;
  unsigned char* data = nullptr;
  long len = 0;  // NOLINT(runtime/int): the OpenSSL API
  const int ok = PEM_read_bio(bio.get(), &name, &header, &data, &len);
  struct Freer {
    char* name;
    char* header;
    unsigned char* data;
    ~Freer() {
      OPENSSL_free(name);
      OPENSSL_free(header);
      OPENSSL_free(data);
    }
  } const freer{name, header, data};
  if (ok != 1 || name == nullptr || std::string_view(name) != "PUBLIC KEY" || len <= 0) {
    ERR_clear_error();
    return InvalidArgumentError("not a PEM public key (want BEGIN PUBLIC KEY)");
  }
  return HexEncode(Sha256(std::span<const uint8_t>(data, static_cast<size_t>(len))));
}

Bytes PublicKey::RawX25519() const {
  return type_ == KeyType::kX25519 ? RawX25519PublicOf(pkey_.get()) : Bytes();
}

// --------------------------------------------------------------- PrivateKey

StatusOr<PrivateKey> PrivateKey::Generate(KeyType type) {
  EVP_PKEY* raw = nullptr;
  switch (type) {
    case KeyType::kRsa2048:
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048});
      break;
    case KeyType::kRsa3072:
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{3072});
      break;
    case KeyType::kX25519:
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "X25519");
      break;
    case KeyType::kEcP256:
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
      break;
  }
  if (raw == nullptr) return SslError("key generation");
  return PrivateKey(EvpPkeyPtr(raw), type);
}

StatusOr<PrivateKey> PrivateKey::FromPem(const SecretBytes& pem) {
  if (pem.size() > kMaxKeyFileBytes) return InvalidArgumentError("private key PEM too large");
  BioPtr bio(BIO_new_mem_buf(pem.UnsafeData(), static_cast<int>(pem.size())));
  if (!bio) return SslError("BIO_new_mem_buf");
  // An empty passphrase callback: encrypted PEMs fail instead of prompting.
  EvpPkeyPtr pkey(PEM_read_bio_PrivateKey(
      bio.get(), nullptr, [](char*, int, int, void*) { return 0; }, nullptr));
  if (!pkey) {
    ERR_clear_error();
    return InvalidArgumentError("not an unencrypted PEM private key (want BEGIN PRIVATE KEY)");
  }
  ASSIGN_OR_RETURN(KeyType type, TypeOf(pkey.get()));
  return PrivateKey(std::move(pkey), type);
}

StatusOr<PrivateKey> PrivateKey::FromRawX25519(const SecretBytes& raw) {
  if (raw.size() != kX25519Bytes) return InvalidArgumentError("X25519 private key must be 32 bytes");
  EvpPkeyPtr pkey(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, raw.UnsafeData(),
                                               raw.size()));
  if (!pkey) return SslError("EVP_PKEY_new_raw_private_key");
  return PrivateKey(std::move(pkey), KeyType::kX25519);
}

StatusOr<SecretBytes> PrivateKey::ToPem() const {
  // Secure-heap memory BIO: OpenSSL clears it when freed.
  BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio) return SslError("BIO_new");
  if (PEM_write_bio_PrivateKey(bio.get(), pkey_.get(), nullptr, nullptr, 0, nullptr,
                               nullptr) != 1) {
    return SslError("PEM_write_bio_PrivateKey");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);  // NOLINT(runtime/int)
  if (len <= 0) return SslError("BIO_get_mem_data");
  return SecretBytes(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data),
                                              static_cast<size_t>(len)));
}

PublicKey PrivateKey::Public() const {
  // Cannot fail for a key that TypeOf accepted; an error is a broken invariant.
  StatusOr<PublicKey> pub = PublicKey::FromEvpPkey(pkey_.get());
  if (!pub.ok()) {
    std::fprintf(stderr, "vmseal: internal error: %s\n", pub.status().ToString().c_str());
    std::abort();
  }
  return *std::move(pub);
}

Bytes PrivateKey::RawX25519Public() const {
  return type_ == KeyType::kX25519 ? RawX25519PublicOf(pkey_.get()) : Bytes();
}

std::string PrivateKey::KeyId() const { return Public().KeyId(); }

// ------------------------------------------------------------------- files

StatusOr<SecretBytes> ReadSecretFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return ErrnoToStatus(errno, "open", path);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoToStatus(errno, "stat", path);
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgumentError("key file " + path + " is not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return PermissionDeniedError("key file " + path + " is accessible by group or others (mode " +
                                 mode + "); run chmod 600 on it");
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxKeyFileBytes) {
    return InvalidArgumentError("key file " + path + " is too large");
  }
  SecretBytes buf(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::read(fd, buf.UnsafeMutableData() + done, buf.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoToStatus(errno, "read", path);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  if (done != buf.size()) return InvalidArgumentError("key file " + path + " changed while read");
  return buf;
}

StatusOr<PrivateKey> LoadPrivateKeyFile(const std::string& path) {
  ASSIGN_OR_RETURN(SecretBytes pem, ReadSecretFile(path));
  StatusOr<PrivateKey> key = PrivateKey::FromPem(pem);
  if (!key.ok()) return key.status().WithPrefix(path);
  return key;
}

StatusOr<PublicKey> LoadPublicKeyFile(Env* env, const std::string& path) {
  ASSIGN_OR_RETURN(std::string pem, ReadFileToString(env, path));
  StatusOr<PublicKey> key = PublicKey::FromPem(pem);
  if (!key.ok()) return key.status().WithPrefix(path);
  return key;
}

Status WritePrivateKeyFile(Env* env, const std::string& path, const PrivateKey& key) {
  ASSIGN_OR_RETURN(SecretBytes pem, key.ToPem());
  return WriteStringToFileAtomic(env, path, AsStringView(pem.UnsafeSpan()), 0600);
}

}  // namespace vmseal::crypto
