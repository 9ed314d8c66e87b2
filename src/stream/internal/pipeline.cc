#include "stream/internal/pipeline.h"

#include <algorithm>
#include <condition_variable>
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
    for (uint64_t j = 0; j < slots; ++j) {
      slots_[j].buf.reset(new uint8_t[buffer_bytes]);
      slots_[j].next_index = j;
    }

    std::vector<std::thread> threads;
    for (int i = 0; i < workers; ++i) threads.emplace_back([this] { WorkLoop(); });
    WriteLoop();
    for (auto& t : threads) t.join();
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }

 private:
  // kFree: the writer is done with it; kRead: a worker owns it; kDone: ready
  // for the writer.
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

  // Records the first error and wakes everyone so they stop.
  void Fail(Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.ok()) error_ = std::move(s);
    cv_.notify_all();
  }

  // Each worker takes the next chunk index, waits for its slot to be free,
  // reads it and seals or opens it in place. Reading in the workers spreads
  // the page-cache copies over all cores instead of one reader thread.
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
        // Freed for chunk i by the writer once chunk i - slots is out (a
        // later chunk must not take it first); that chunk was taken
        // earlier, so the wait always ends.
        cv_.wait(lock, [&] {
          return !error_.ok() || (slot->state == State::kFree && slot->next_index == i);
        });
        if (!error_.ok()) return;
        slot->state = State::kRead;
      }
      const size_t want = InBytes(i);
      uint8_t* buf = slot->buf.get();
      StatusOr<size_t> n = in_.Read(InOffset(i), {buf, want});
      if (!n.ok()) return Fail(n.status());
      if (*n != want) return Fail(AbortedError("input changed size while being read"));
      const bool last = i + 1 == layout_.chunk_count;
      const size_t pt = layout_.PlaintextChunkBytes(i);
      Status s = Seal() ? (*cipher)->Seal(i, last, {buf, pt}, {buf, pt + kTagBytes})
                        : (*cipher)->Open(i, last, {buf, pt + kTagBytes}, {buf, pt});
      if (!s.ok()) return Fail(std::move(s));
      bool zero = !Seal() && spec_.sparse && AllZero(buf, pt);
      std::lock_guard<std::mutex> lock(mu_);
      slot->out_len = Seal() ? pt + kTagBytes : pt;
      slot->zero = zero;
      slot->state = State::kDone;
      cv_.notify_all();
    }
  }

  void WriteLoop() {
    uint64_t done_bytes = 0;
    for (uint64_t i = 0; i < layout_.chunk_count; ++i) {
      Slot& slot = slots_[i % slots_.size()];
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !error_.ok() || slot.state == State::kDone; });
        if (!error_.ok()) return;
      }
      Status s = slot.zero ? out_->Skip(slot.out_len)
                           : out_->Append({slot.buf.get(), slot.out_len});
      if (!s.ok()) return Fail(std::move(s));
      done_bytes += layout_.PlaintextChunkBytes(i);
      if (spec_.progress) spec_.progress(done_bytes, layout_.plaintext_bytes);
      std::lock_guard<std::mutex> lock(mu_);
      slot.state = State::kFree;
      slot.next_index = i + slots_.size();
      cv_.notify_all();
    }
  }

  const RandomAccessFile& in_;
  WritableFile* const out_;
  const SecretBytes& key_;
  const PipelineSpec& spec_;
  const Layout layout_;
  std::vector<Slot> slots_;

  std::mutex mu_;
  std::condition_variable cv_;
  Status error_;
  uint64_t next_work_ = 0;   // next chunk a worker takes
};

}  // namespace

Status RunPipeline(const RandomAccessFile& in, WritableFile* out,
                   const SecretBytes& stream_key, const PipelineSpec& spec) {
  Pipeline p(in, out, stream_key, spec);
  return p.Run();
}

}  // namespace vmseal::stream::internal
