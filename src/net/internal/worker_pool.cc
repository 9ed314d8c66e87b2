#include "net/internal/worker_pool.h"

namespace vmseal::net::internal {

WorkerPool::WorkerPool(int threads, uint64_t max_queued, uint64_t max_queued_anonymous)
    : max_queued_(max_queued), max_queued_anonymous_(max_queued_anonymous) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
}

WorkerPool::~WorkerPool() { Stop(); }

bool WorkerPool::TrySubmit(std::function<void()> task, bool authenticated) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || queue_.size() >= max_queued_) return false;
    if (!authenticated && queued_anonymous_ >= max_queued_anonymous_) return false;
    if (!authenticated) ++queued_anonymous_;
    queue_.push_back(Task{std::move(task), authenticated});
  }
  cv_.notify_one();
  return true;
}

bool WorkerPool::SubmitContinuation(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    queue_.push_back(Task{std::move(task), true});
  }
  cv_.notify_one();
  return true;
}

void WorkerPool::Work() {
  while (true) {
    Task task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left to run
      task = std::move(queue_.front());
      queue_.pop_front();
      if (!task.authenticated) --queued_anonymous_;
    }
    task.run();
  }
}

void WorkerPool::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
}

uint64_t WorkerPool::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

}  // namespace vmseal::net::internal
