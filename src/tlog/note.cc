#include "tlog/note.h"

#include <openssl/err.h>
#include <openssl/evp.h>

#include "crypto/ssl_util.h"

namespace vmseal::tlog {
namespace {

constexpr std::string_view kSigPrefix = "\xE2\x80\x94 ";  // U+2014 em dash, space
constexpr size_t kKeyIdBytes = 4;
constexpr size_t kEd25519PublicKeyBytes = 32;
constexpr size_t kEd25519SignatureBytes = 64;

// Decodes one UTF-8 sequence at `s[*i]` strictly (no overlong forms, no
// surrogates, at most U+10FFFF); advances *i. -1 when invalid.
int32_t NextCodePoint(std::string_view s, size_t* i) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = b(*i);
  if (c < 0x80) {
    ++*i;
    return c;
  }
  size_t len;
  int32_t cp;
  int32_t min;
  if ((c & 0xE0) == 0xC0) {
    len = 2, cp = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3, cp = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4, cp = c & 0x07, min = 0x10000;
  } else {
    return -1;
  }
  if (s.size() - *i < len) return -1;
  for (size_t k = 1; k < len; ++k) {
    if ((b(*i + k) & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (b(*i + k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
  *i += len;
  return cp;
}

bool IsUnicodeSpace(int32_t cp) {
  return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

// Valid UTF-8 with no control character other than "\n".
Status CheckNoteChars(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const int32_t cp = NextCodePoint(s, &i);
    if (cp < 0) return InvalidArgumentError("note: not valid UTF-8");
    if (cp < 0x20 && cp != '\n') return InvalidArgumentError("note: control character");
  }
  return OkStatus();
}

// Base64 that re-encodes to exactly `text` (no whitespace, canonical
// padding bits), so one value has one spelling.
StatusOr<crypto::Bytes> StrictBase64(std::string_view text) {
  auto bytes = crypto::Base64Decode(text);
  if (!bytes.ok() || crypto::Base64Encode(*bytes) != text) {
    return InvalidArgumentError("not canonical base64");
  }
  return bytes;
}

uint32_t ReadBigEndian32(std::span<const uint8_t> b) {
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
}

std::string Hex32(uint32_t v) {
  const uint8_t b[4] = {static_cast<uint8_t>(v >> 24), static_cast<uint8_t>(v >> 16),
                        static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)};
  return crypto::HexEncode(b);
}

StatusOr<NoteSignature> ParseSignatureLine(std::string_view line) {
  if (line.substr(0, kSigPrefix.size()) != kSigPrefix) {
    return InvalidArgumentError("note: signature line does not start with an em dash and a space");
  }
  line.remove_prefix(kSigPrefix.size());
  const size_t space = line.find(' ');
  if (space == std::string_view::npos) return InvalidArgumentError("note: signature line has no signature");
  NoteSignature sig;
  sig.key_name = std::string(line.substr(0, space));
  if (!IsValidKeyName(sig.key_name)) return InvalidArgumentError("note: invalid key name");
  auto blob = StrictBase64(line.substr(space + 1));
  if (!blob.ok()) return InvalidArgumentError("note: signature is not canonical base64");
  if (blob->size() < kKeyIdBytes + 1) return InvalidArgumentError("note: signature too short");
  sig.key_id = ReadBigEndian32(*blob);
  sig.signature.assign(blob->begin() + kKeyIdBytes, blob->end());
  return sig;
}

}  // namespace

bool IsValidKeyName(std::string_view name) {
  if (name.empty() || name.size() > kMaxKeyNameBytes) return false;
  size_t i = 0;
  while (i < name.size()) {
    const int32_t cp = NextCodePoint(name, &i);
    if (cp < 0x20 || cp == '+' || IsUnicodeSpace(cp)) return false;  // also -1
  }
  return true;
}

StatusOr<SignedNote> ParseNote(std::string_view note) {
  if (note.size() > kMaxNoteBytes) return InvalidArgumentError("note: larger than 64 KiB");
  RETURN_IF_ERROR(CheckNoteChars(note));
  const size_t split = note.rfind("\n\n");
  if (split == std::string_view::npos) return InvalidArgumentError("note: no blank line before signatures");
  SignedNote out;
  out.text = std::string(note.substr(0, split + 1));
  std::string_view sigs = note.substr(split + 2);
  if (sigs.empty()) return InvalidArgumentError("note: no signature lines");
  if (sigs.back() != '\n') return InvalidArgumentError("note: does not end in a newline");
  while (!sigs.empty()) {
    const size_t nl = sigs.find('\n');
    if (out.signatures.size() == kMaxNoteSignatures) {
      return InvalidArgumentError("note: more than 16 signatures");
    }
    ASSIGN_OR_RETURN(NoteSignature sig, ParseSignatureLine(sigs.substr(0, nl)));
    out.signatures.push_back(std::move(sig));
    sigs.remove_prefix(nl + 1);
  }
  return out;
}

std::string FormatNote(const SignedNote& note) {
  std::string out = note.text + "\n";
  for (const NoteSignature& s : note.signatures) {
    crypto::Bytes blob = {static_cast<uint8_t>(s.key_id >> 24), static_cast<uint8_t>(s.key_id >> 16),
                          static_cast<uint8_t>(s.key_id >> 8), static_cast<uint8_t>(s.key_id)};
    blob.insert(blob.end(), s.signature.begin(), s.signature.end());
    out += std::string(kSigPrefix) + s.key_name + " " + crypto::Base64Encode(blob) + "\n";
  }
  return out;
}

uint32_t Ed25519KeyId(std::string_view key_name, std::span<const uint8_t> public_key) {
  crypto::Sha256Hasher h;
  h.Update(key_name);
  const uint8_t sep[2] = {0x0A, kEd25519SignatureType};
  h.Update(std::span<const uint8_t>(sep));
  h.Update(public_key);
  const crypto::Sha256Digest d = h.Finish();
  return ReadBigEndian32(d);
}

StatusOr<std::unique_ptr<NoteVerifier>> NoteVerifier::Create(std::string_view vkey) {
  const size_t p1 = vkey.find('+');
  if (p1 == std::string_view::npos) return InvalidArgumentError("verifier key: expected name+id+key");
  const size_t p2 = vkey.find('+', p1 + 1);
  if (p2 == std::string_view::npos) return InvalidArgumentError("verifier key: expected name+id+key");
  const std::string_view name = vkey.substr(0, p1);
  const std::string_view id_hex = vkey.substr(p1 + 1, p2 - p1 - 1);
  if (!IsValidKeyName(name)) return InvalidArgumentError("verifier key: invalid key name");
  auto id_bytes = crypto::HexDecode(id_hex);
  if (id_hex.size() != 8 || !id_bytes.ok() || crypto::HexEncode(*id_bytes) != id_hex) {
    return InvalidArgumentError("verifier key: key id must be 8 lowercase hex digits");
  }
  auto key = StrictBase64(vkey.substr(p2 + 1));
  if (!key.ok() || key->size() != 1 + kEd25519PublicKeyBytes || (*key)[0] != kEd25519SignatureType) {
    return InvalidArgumentError("verifier key: expected base64 of 0x01 and a 32-byte Ed25519 key");
  }
  crypto::Bytes pub(key->begin() + 1, key->end());
  const uint32_t id = ReadBigEndian32(*id_bytes);
  if (Ed25519KeyId(name, pub) != id) {
    return InvalidArgumentError("verifier key: key id does not match the name and key");
  }
  return std::unique_ptr<NoteVerifier>(new NoteVerifier(std::string(name), id, std::move(pub)));
}

bool NoteVerifier::VerifyText(std::string_view text, std::span<const uint8_t> signature) const {
  if (signature.size() != kEd25519SignatureBytes) return false;
  crypto::EvpPkeyPtr pkey(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, public_key_.data(),
                                                      public_key_.size()));
  crypto::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!pkey || !ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, pkey.get()) != 1) {
    ERR_clear_error();
    return false;
  }
  const int ok = EVP_DigestVerify(ctx.get(), signature.data(), signature.size(),
                                  reinterpret_cast<const unsigned char*>(text.data()), text.size());
  ERR_clear_error();
  return ok == 1;
}

StatusOr<std::string> NoteVerifier::Open(std::string_view note) const {
  ASSIGN_OR_RETURN(SignedNote parsed, ParseNote(note));
  for (const NoteSignature& s : parsed.signatures) {
    if (s.key_name != name_ || s.key_id != key_id_) continue;
    if (!VerifyText(parsed.text, s.signature)) {
      return UnauthenticatedError("note: the signature of " + name_ + " does not verify");
    }
    return std::move(parsed.text);
  }
  return UnauthenticatedError("note: no signature of " + name_ + "+" + Hex32(key_id_));
}

StatusOr<std::unique_ptr<NoteSigner>> NoteSigner::Create(std::string key_name, const SecretBytes& seed) {
  if (!IsValidKeyName(key_name)) return InvalidArgumentError("note signer: invalid key name");
  if (seed.size() != kEd25519SeedBytes) return InvalidArgumentError("note signer: the seed must be 32 bytes");
  crypto::EvpPkeyPtr pkey(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed.UnsafeData(),
                                                       seed.size()));
  if (!pkey) return crypto::SslError("note signer: Ed25519 key");
  crypto::Bytes pub(kEd25519PublicKeyBytes);
  size_t len = pub.size();
  if (EVP_PKEY_get_raw_public_key(pkey.get(), pub.data(), &len) != 1 || len != pub.size()) {
    return crypto::SslError("note signer: Ed25519 public key");
  }
  const uint32_t id = Ed25519KeyId(key_name, pub);
  return std::unique_ptr<NoteSigner>(new NoteSigner(std::move(key_name), id, std::move(pub), pkey.release()));
}

NoteSigner::~NoteSigner() { EVP_PKEY_free(static_cast<EVP_PKEY*>(pkey_)); }

std::string NoteSigner::VerifierKey() const {
  crypto::Bytes blob = {kEd25519SignatureType};
  blob.insert(blob.end(), public_key_.begin(), public_key_.end());
  return name_ + "+" + Hex32(key_id_) + "+" + crypto::Base64Encode(blob);
}

StatusOr<std::string> NoteSigner::Sign(std::string_view text) const {
  if (text.empty() || text.back() != '\n') return InvalidArgumentError("note text must end in a newline");
  if (text.size() >= 2 && text.substr(text.size() - 2) == "\n\n") {
    return InvalidArgumentError("note text must not end in a blank line");
  }
  RETURN_IF_ERROR(CheckNoteChars(text));
  crypto::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, static_cast<EVP_PKEY*>(pkey_)) != 1) {
    return crypto::SslError("note signer: init");
  }
  crypto::Bytes sig(kEd25519SignatureBytes);
  size_t len = sig.size();
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, reinterpret_cast<const unsigned char*>(text.data()),
                     text.size()) != 1 ||
      len != sig.size()) {
    return crypto::SslError("note signer: sign");
  }
  SignedNote note{std::string(text), {{name_, key_id_, std::move(sig)}}};
  std::string out = FormatNote(note);
  if (out.size() > kMaxNoteBytes) return InvalidArgumentError("note: larger than 64 KiB");
  return out;
}

}  // namespace vmseal::tlog
