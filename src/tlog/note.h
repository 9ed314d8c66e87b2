// C2SP signed-note (c2sp.org/signed-note) with Ed25519 signatures (type
// 0x01) through OpenSSL EVP. docs/format/audit-log.md §4 lists the rules
// this parser enforces and the vectors.
//
// A note is text ending in "\n", a blank line, and signature lines
// "— <key name> <base64(key id (4 bytes, big-endian) || signature)>\n".
//
// NoteSigner and NoteVerifier are immutable and thread-safe.
#ifndef VMSEAL_TLOG_NOTE_H_
#define VMSEAL_TLOG_NOTE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "crypto/primitives.h"

namespace vmseal::tlog {

// Limits of the parser (docs/format/audit-log.md, limits table).
inline constexpr size_t kMaxNoteBytes = 64 * 1024;
inline constexpr size_t kMaxNoteSignatures = 16;
inline constexpr size_t kMaxKeyNameBytes = 256;
// The signature type byte of Ed25519 (signed-note §"Signature types").
inline constexpr uint8_t kEd25519SignatureType = 0x01;
inline constexpr size_t kEd25519SeedBytes = 32;

struct NoteSignature {
  std::string key_name;
  uint32_t key_id = 0;
  crypto::Bytes signature;  // without the key id
};

struct SignedNote {
  std::string text;  // ends in "\n"; what the signatures cover
  std::vector<NoteSignature> signatures;
};

// Parses a signed note strictly: valid UTF-8, no control character but
// "\n", text ending in "\n" and split from the signatures at the last blank
// line, 1..16 well-formed signature lines, at most 64 KiB. INVALID_ARGUMENT
// "note: ..." otherwise. Checks no signature.
StatusOr<SignedNote> ParseNote(std::string_view note);

// The wire form of `note` (no validation beyond what FormatNote needs).
std::string FormatNote(const SignedNote& note);

// key id = SHA-256(name || 0x0A || 0x01 || public key)[:4], big-endian.
uint32_t Ed25519KeyId(std::string_view key_name, std::span<const uint8_t> public_key);

// Whether `name` is a valid key name: non-empty, at most 256 bytes, no
// space, '+', or control character.
bool IsValidKeyName(std::string_view name);

// Verifies Ed25519 note signatures of one key, given as a verifier key
// string "<name>+<hex key id>+<base64(0x01 || 32-byte public key)>".
class NoteVerifier {
 public:
  // INVALID_ARGUMENT for a malformed verifier key or one whose key id is not
  // the derivation above.
  static StatusOr<std::unique_ptr<NoteVerifier>> Create(std::string_view verifier_key);

  const std::string& key_name() const { return name_; }
  uint32_t key_id() const { return key_id_; }

  // Parses `note` and returns its text if it carries a signature line of
  // this key (name and id) that verifies. Signatures of other keys are
  // ignored. UNAUTHENTICATED "note: ..." if this key's signature fails or
  // is absent; INVALID_ARGUMENT if the note is malformed.
  StatusOr<std::string> Open(std::string_view note) const;

  // Whether `signature` is this key's signature of `text`.
  bool VerifyText(std::string_view text, std::span<const uint8_t> signature) const;

 private:
  NoteVerifier(std::string name, uint32_t key_id, crypto::Bytes public_key)
      : name_(std::move(name)), key_id_(key_id), public_key_(std::move(public_key)) {}
  const std::string name_;
  const uint32_t key_id_;
  const crypto::Bytes public_key_;
};

// Signs notes with an Ed25519 key named `key_name`.
class NoteSigner {
 public:
  // `seed`: the 32-byte RFC 8032 private key. INVALID_ARGUMENT for a bad
  // name or seed length.
  static StatusOr<std::unique_ptr<NoteSigner>> Create(std::string key_name, const SecretBytes& seed);
  ~NoteSigner();
  NoteSigner(const NoteSigner&) = delete;
  NoteSigner& operator=(const NoteSigner&) = delete;

  const std::string& key_name() const { return name_; }
  uint32_t key_id() const { return key_id_; }
  const crypto::Bytes& public_key() const { return public_key_; }
  // "<name>+<hex id>+<base64(0x01 || public key)>", for NoteVerifier.
  std::string VerifierKey() const;

  // The signed note of `text`, which must be valid note text (UTF-8, ends
  // in "\n", no control character but "\n", no blank line at the end).
  StatusOr<std::string> Sign(std::string_view text) const;

 private:
  NoteSigner(std::string name, uint32_t key_id, crypto::Bytes public_key, void* pkey)
      : name_(std::move(name)), key_id_(key_id), public_key_(std::move(public_key)), pkey_(pkey) {}
  const std::string name_;
  const uint32_t key_id_;
  const crypto::Bytes public_key_;
  void* const pkey_;  // EVP_PKEY, owned
};

}  // namespace vmseal::tlog

#endif  // VMSEAL_TLOG_NOTE_H_
