// RAII owners for tpm2-tss handles and a TSS2_RC -> Status helper. Internal to
// vmseal_tpm.
#ifndef VMSEAL_TPM_INTERNAL_ESYS_UTIL_H_
#define VMSEAL_TPM_INTERNAL_ESYS_UTIL_H_

#include <tss2/tss2_esys.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "base/status.h"

namespace vmseal::tpm::internal {

struct TctiDeleter {
  void operator()(TSS2_TCTI_CONTEXT* t) const { Tss2_TctiLdr_Finalize(&t); }
};
using TctiPtr = std::unique_ptr<TSS2_TCTI_CONTEXT, TctiDeleter>;

struct EsysContextDeleter {
  void operator()(ESYS_CONTEXT* c) const { Esys_Finalize(&c); }
};
using EsysContextPtr = std::unique_ptr<ESYS_CONTEXT, EsysContextDeleter>;

// Owner of memory the ESAPI allocated for an output parameter.
struct EsysFreeDeleter {
  void operator()(void* p) const { Esys_Free(p); }
};
template <typename T>
using EsysPtr = std::unique_ptr<T, EsysFreeDeleter>;

// A loaded transient object or session: flushed from the TPM on destruction.
// A handle obtained by Esys_TR_FromTPMPublic (NV index, persistent object)
// is only closed (Esys_TR_Close), never flushed.
class EsysHandle {
 public:
  EsysHandle() = default;
  EsysHandle(ESYS_CONTEXT* ctx, ESYS_TR tr, bool flush = true)
      : ctx_(ctx), tr_(tr), flush_(flush) {}
  ~EsysHandle() { Reset(); }
  EsysHandle(EsysHandle&& o) noexcept
      : ctx_(std::exchange(o.ctx_, nullptr)),
        tr_(std::exchange(o.tr_, ESYS_TR_NONE)),
        flush_(o.flush_) {}
  EsysHandle& operator=(EsysHandle&& o) noexcept {
    if (this != &o) {
      Reset();
      ctx_ = std::exchange(o.ctx_, nullptr);
      tr_ = std::exchange(o.tr_, ESYS_TR_NONE);
      flush_ = o.flush_;
    }
    return *this;
  }
  EsysHandle(const EsysHandle&) = delete;
  EsysHandle& operator=(const EsysHandle&) = delete;

  ESYS_TR get() const { return tr_; }
  // Forgets the handle without talking to the TPM (its connection is gone).
  void Release() { tr_ = ESYS_TR_NONE; }
  bool valid() const { return tr_ != ESYS_TR_NONE; }
  void Reset() {
    if (ctx_ != nullptr && tr_ != ESYS_TR_NONE) {
      if (flush_) {
        Esys_FlushContext(ctx_, tr_);
      } else {
        Esys_TR_Close(ctx_, &tr_);
      }
    }
    tr_ = ESYS_TR_NONE;
  }

 private:
  ESYS_CONTEXT* ctx_ = nullptr;
  ESYS_TR tr_ = ESYS_TR_NONE;
  bool flush_ = true;
};

// True if `rc` means the connection is gone (TCTI error) or the TPM no
// longer holds the objects/sessions we loaded (TPM_RC_REFERENCE_H0..S6: the
// TPM restarted; swtpm's TCTI reconnects transparently, so this is how a
// restart shows).
inline bool TpmLostState(TSS2_RC rc) {
  if ((rc & TSS2_RC_LAYER_MASK) == TSS2_TCTI_RC_LAYER) return true;
  if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER) return false;
  return (rc & ~TSS2_RC{0xF}) == TPM2_RC_REFERENCE_H0;
}

// "TPM <what>: <decoded rc>" with code UNAVAILABLE when TpmLostState(rc) and
// INTERNAL otherwise.
inline Status TpmError(std::string_view what, TSS2_RC rc) {
  std::string msg = "TPM ";
  msg += what;
  msg += ": ";
  msg += Tss2_RC_Decode(rc);
  return Status(TpmLostState(rc) ? StatusCode::kUnavailable : StatusCode::kInternal,
                std::move(msg));
}

}  // namespace vmseal::tpm::internal

#endif  // VMSEAL_TPM_INTERNAL_ESYS_UTIL_H_
