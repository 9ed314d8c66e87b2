#include "stream/internal/pipeline.h"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "stream/internal/chunk_cipher.h"

namespace vmseal::stream::internal {
namespace {

bool AllZero(const uint8_t* p, size_t n) {
  if (n == 0) return true;
  return p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0;
}

class Pipeline {
 public:
  Pipeline(const RandomAccessFile& in, WritableFile* out, const SecretBytes& key,
           const PipelineSpec& spec)
      : in_(in), out_(out), key_(key), spec_(spec), layout_(spec.layout) {}

  Status Run() {
    int workers = spec_.threads > 0 ? spec_.threads
                                    : static_cast<int>(std::thread::hardware_concurrency());
    workers = std::max(workers, 1);
    const uint64_t buffer_bytes = uint64_t{layout_.chunk_size_bytes} + kTagBytes;
    uint64_t slots = 2 * static_cast<uint64_t>(workers) + 2;
    slots = std::min(slots, std::max<uint64_t>(3, kPipelineMemoryBytes / buffer_bytes));
    slots = std::min(slots, layout_.chunk_count);
    workers = static_cast<int>(std::min<uint64_t>(workers, slots));
    slots_.resize(slots);
    if (Seal()) {
      // Plaintext for chunks that lie in a hole of a sparse input. calloc of
      // this size maps fresh zero pages (the kernel's one shared zero page
      // until written), so it costs neither memset nor memory.
      zeros_.reset(static_cast<uint8_t*>(std::calloc(layout_.chunk_size_bytes, 1)));
      if (zeros_ == nullptr) return ResourceExhaustedError("out of memory");
    }
    for (uint64_t j = 0; j < slots; ++j) {
      slots_[j].buf.reset(new uint8_t[buffer_bytes]);
      slots_[j].next_index = j;
    }

    std::vector<std::thread> threads;
    for (int i = 1; i < workers; ++i) threads.emplace_back([this] { WorkLoop(); });
    WorkLoop();  // the calling thread is one of the workers
    for (auto& t : threads) t.join();
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.ok() && next_write_ != layout_.chunk_count) {
      return InternalError("pipeline stopped before the last chunk");
    }
    return error_;
  }

 private:
  // kFree: written out (or never used); kRead: a worker owns it; kDone:
  // sealed or opened, waiting to be written.
  enum class State { kFree, kRead, kDone };
  struct Slot {
    std::unique_ptr<uint8_t[]> buf;
    State state = State::kFree;
    size_t out_len = 0;
    bool zero = false;
    uint64_t next_index = 0;  // the chunk this slot is free for
  };

  bool Seal() const { return spec_.direction == Direction::kSeal; }
  size_t InBytes(uint64_t i) const {
    return layout_.PlaintextChunkBytes(i) + (Seal() ? 0 : kTagBytes);
  }
  uint64_t InOffset(uint64_t i) const {
    return Seal() ? i * layout_.chunk_size_bytes : layout_.SealedChunkOffset(i);
  }

  // Records the first error and wakes everyone so they stop. mu_ held.
  void FailLocked(Status s) {
    if (error_.ok()) error_ = std::move(s);
    worker_cv_.notify_all();
  }
  void Fail(Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    FailLocked(std::move(s));
  }

  // Each worker takes the next chunk index, waits for its slot to be free,
  // reads it and seals or opens it in place. Reading in the workers spreads
  // the page-cache copies over all cores. Output is written in order by
  // whichever worker finishes the chunk that is next to be written: it then
  // writes every finished chunk after it too. No thread exists only to
  // write, so nobody sleeps and wakes per chunk (on two cores a writer
  // thread's wake-ups preempted the workers ten thousand times per 4 GiB).
  void WorkLoop() {
    auto cipher = ChunkCipher::Create(key_);
    if (!cipher.ok()) return Fail(cipher.status());
    while (true) {
      uint64_t i;
      Slot* slot;
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (!error_.ok() || next_work_ == layout_.chunk_count) return;
        i = next_work_++;
        slot = &slots_[i % slots_.size()];
        // Freed for chunk i once chunk i - slots is written (a later chunk
        // must not take it first); that chunk was taken earlier and whoever
        // finishes it writes it, so the wait always ends.
        worker_cv_.wait(lock, [&] {
          return !error_.ok() || (slot->state == State::kFree && slot->next_index == i);
        });
        if (!error_.ok()) return;
        slot->state = State::kRead;
      }
      const size_t want = InBytes(i);
      uint8_t* buf = slot->buf.get();
      const bool last = i + 1 == layout_.chunk_count;
      const size_t pt = layout_.PlaintextChunkBytes(i);
      // A chunk in a hole of the input is sealed from the zero buffer:
      // nothing to read, nothing to zero.
      const uint8_t* plaintext = buf;
      if (Seal() && pt > 0 && in_.IsHole(InOffset(i), want)) {
        plaintext = zeros_.get();
      } else {
        StatusOr<size_t> n = in_.Read(InOffset(i), {buf, want});
        if (!n.ok()) return Fail(n.status());
        if (*n != want) return Fail(AbortedError("input changed size while being read"));
      }
      Status s = Seal() ? (*cipher)->Seal(i, last, {plaintext, pt}, {buf, pt + kTagBytes})
                        : (*cipher)->Open(i, last, {buf, pt + kTagBytes}, {buf, pt});
      if (!s.ok()) return Fail(std::move(s));
      bool zero = !Seal() && spec_.sparse && AllZero(buf, pt);
      std::unique_lock<std::mutex> lock(mu_);
      slot->out_len = Seal() ? pt + kTagBytes : pt;
      slot->zero = zero;
      slot->state = State::kDone;
      if (writing_) continue;  // the worker that is writing will get to it
      writing_ = true;
      while (error_.ok() && next_write_ < layout_.chunk_count) {
        Slot& w = slots_[next_write_ % slots_.size()];
        if (w.state != State::kDone) break;
        const uint64_t index = next_write_;
        lock.unlock();
        Status written = w.zero ? out_->Skip(w.out_len) : out_->Append({w.buf.get(), w.out_len});
        if (written.ok()) {
          done_bytes_ += layout_.PlaintextChunkBytes(index);
          if (spec_.progress) spec_.progress(done_bytes_, layout_.plaintext_bytes);
        }
        lock.lock();
        if (!written.ok()) {
          writing_ = false;
          return FailLocked(std::move(written));
        }
        w.state = State::kFree;
        w.next_index = index + slots_.size();
        ++next_write_;
        worker_cv_.notify_all();  // no system call when nobody waits
      }
      writing_ = false;
    }
  }

  const RandomAccessFile& in_;
  WritableFile* const out_;
  const SecretBytes& key_;
  const PipelineSpec& spec_;
  const Layout layout_;
  std::vector<Slot> slots_;
  struct FreeDeleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, FreeDeleter> zeros_;  // seal: one chunk of zeros

  std::mutex mu_;
  std::condition_variable worker_cv_;  // workers wait for their slot
  Status error_;
  uint64_t next_work_ = 0;   // next chunk a worker takes
  uint64_t next_write_ = 0;  // next chunk to write out
  bool writing_ = false;     // a worker is writing (only one at a time)
  uint64_t done_bytes_ = 0;  // plaintext bytes written; only the writer
};

}  // namespace

Status RunPipeline(const RandomAccessFile& in, WritableFile* out,
                   const SecretBytes& stream_key, const PipelineSpec& spec) {
  Pipeline p(in, out, stream_key, spec);
  return p.Run();
}

}  // namespace vmseal::stream::internal
