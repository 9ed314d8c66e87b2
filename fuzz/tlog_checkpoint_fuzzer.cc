// Signed checkpoints as a customer or `kms audit verify --checkpoint` reads
// them: the signed note, its checkpoint text, and the signature check with
// a fixed verifier key. Formatting a parsed value must give the input back.
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "fuzz_util.h"
#include "tlog/checkpoint.h"
#include "tlog/note.h"

namespace {

const vmseal::tlog::NoteVerifier& Verifier() {
  static const auto* v = [] {
    auto created = vmseal::tlog::NoteVerifier::Create(
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW");
    if (!created.ok()) std::abort();
    return created->release();
  }();
  return *v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmseal::tlog;
  const std::string_view text = vmseal::fuzz::AsText(data, size);
  auto note = ParseNote(text);
  if (note.ok()) {
    if (FormatNote(*note) != text) std::abort();  // one spelling per note
    (void)Verifier().Open(text);
    (void)ParseCheckpoint(note->text);
  }
  auto checkpoint = ParseCheckpoint(text);
  if (checkpoint.ok()) {
    auto again = FormatCheckpoint(*checkpoint);
    if (!again.ok() || *again != text) std::abort();
  }
  (void)NoteVerifier::Create(text);
  return 0;
}
