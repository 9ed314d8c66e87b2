// The HTTPS front end's handler threads: a fixed number of workers and a
// bounded queue of complete requests (issue 16). The event loop never blocks
// on it: a request that finds the queue full is refused at once (503), and
// anonymous requests may fill only part of the queue, so that callers with a
// verified client certificate still find room.
#ifndef VMSEAL_NET_INTERNAL_WORKER_POOL_H_
#define VMSEAL_NET_INTERNAL_WORKER_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace vmseal::net::internal {

class WorkerPool {
 public:
  // `threads` >= 1 workers; at most `max_queued` tasks waiting (>= 1), of
  // which at most `max_queued_anonymous` anonymous ones.
  WorkerPool(int threads, uint64_t max_queued, uint64_t max_queued_anonymous);
  // Stop()s.
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues `task`; false (and `task` dropped) when the queue has no room for
  // it, or after Stop().
  bool TrySubmit(std::function<void()> task, bool authenticated);
  // Queues the next step of a request already admitted (a streamed body's
  // next piece): never refused for a full queue, only after Stop().
  bool SubmitContinuation(std::function<void()> task);
  // Runs the tasks already queued, then joins the workers. Idempotent.
  void Stop();
  // Tasks waiting (not yet running).
  uint64_t queued() const;

 private:
  struct Task {
    std::function<void()> run;
    bool authenticated;
  };
  void Work();

  const uint64_t max_queued_, max_queued_anonymous_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  uint64_t queued_anonymous_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace vmseal::net::internal

#endif  // VMSEAL_NET_INTERNAL_WORKER_POOL_H_
