#include "csp/job_events.h"

#include <chrono>
#include <utility>

#include <nlohmann/json.hpp>

namespace vmseal::csp {

// One stream: what it last sent, and when it last looked.
class JobEventHub::Stream : public net::EventStream {
 public:
  Stream(std::shared_ptr<JobEventHub> hub, Who who, Principal principal, std::string job_id,
         Render render)
      : hub_(std::move(hub)), who_(std::move(who)), principal_(std::move(principal)),
        job_id_(std::move(job_id)), render_(std::move(render)) {}
  ~Stream() override { hub_->Release(principal_.customer_id); }

  StatusOr<std::string> Next(bool* done) override {
    const Options& o = hub_->options_;
    const int64_t now = hub_->NowMs();
    // The session: a database read, so only now and then, or after a
    // logout here. The count is read before the check: a logout after it
    // is seen next time.
    const uint64_t logouts = hub_->accounts_ != nullptr ? hub_->accounts_->LogoutCount() : 0;
    if (now - session_checked_ms_ >= o.session_recheck_ms || logouts != logouts_seen_) {
      logouts_seen_ = logouts;
      ASSIGN_OR_RETURN(Principal p, who_());
      if (p.customer_id != principal_.customer_id) return UnauthenticatedError("the session changed");
      session_checked_ms_ = now;
    }
    std::string out;
    const uint64_t changes = hub_->Changes();
    if (first_ || changes != changes_seen_) {
      changes_seen_ = changes;
      auto j = hub_->jobs_->PeekJob(principal_, job_id_);
      if (!j.ok()) {
        if (j.status().code() != StatusCode::kNotFound) return j.status();
        *done = true;  // gone: one last event, then the end
        return std::string("event: gone\ndata: {}\n\n");
      }
      std::string job = render_(*j);
      if (job != last_job_) {
        last_job_ = std::move(job);
        out += "id: " + std::to_string(++sent_) + "\nevent: job\ndata: " + last_job_ + "\n\n";
      }
    }
    if (hub_->console_logs_ != nullptr) {
      const uint64_t generation = hub_->console_logs_->Generation();
      if (first_ || generation != console_seen_ || now - console_checked_ms_ >= o.console_recheck_ms) {
        console_seen_ = generation;
        console_checked_ms_ = now;
        auto e = hub_->console_logs_->Get(job_id_);
        if (e.ok() && e->text != last_console_) {
          last_console_ = e->text;
          out += "event: console\ndata: " + nlohmann::json{{"text", e->text}}.dump() + "\n\n";
        }
      }
    }
    first_ = false;
    return out;
  }

 private:
  friend class JobEventHub;
  const std::shared_ptr<JobEventHub> hub_;
  const Who who_;
  const Principal principal_;
  const std::string job_id_;
  const Render render_;
  bool first_ = true;
  int64_t session_checked_ms_ = 0;
  uint64_t logouts_seen_ = 0;
  uint64_t changes_seen_ = 0;
  uint64_t console_seen_ = 0;
  int64_t console_checked_ms_ = 0;
  std::string last_job_, last_console_;
  uint64_t sent_ = 0;
};

std::shared_ptr<JobEventHub> JobEventHub::Create(Options options, JobManager* jobs,
                                                 ConsoleLogs* console_logs, Accounts* accounts) {
  return std::shared_ptr<JobEventHub>(new JobEventHub(std::move(options), jobs, console_logs, accounts));
}

JobEventHub::JobEventHub(Options options, JobManager* jobs, ConsoleLogs* console_logs,
                         Accounts* accounts)
    : options_(std::move(options)), jobs_(jobs), console_logs_(console_logs), accounts_(accounts) {}

int64_t JobEventHub::NowMs() const {
  if (options_.now_ms) return options_.now_ms();
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

StatusOr<std::unique_ptr<net::EventStream>> JobEventHub::Open(Who who, const std::string& job_id,
                                                               Render render) {
  const uint64_t logouts = accounts_ != nullptr ? accounts_->LogoutCount() : 0;
  const int64_t checked_ms = NowMs();
  ASSIGN_OR_RETURN(Principal p, who());
  // One store read at the opening (the job may be another replica's news).
  RETURN_IF_ERROR(jobs_->GetJob(p, job_id).status());
  {
    std::lock_guard<std::mutex> lock(mu_);
    int& mine = per_customer_[p.customer_id];
    if (mine >= options_.max_streams_per_customer) {
      if (mine == 0) per_customer_.erase(p.customer_id);
      return ResourceExhaustedError("too many event streams for this account; poll GET /v1/jobs/{id}");
    }
    if (open_ >= options_.max_streams) {
      if (mine == 0) per_customer_.erase(p.customer_id);
      return UnavailableError("too many event streams; poll GET /v1/jobs/{id}");
    }
    ++mine;
    ++open_;
  }
  auto stream = std::make_unique<Stream>(shared_from_this(), std::move(who), p, job_id, std::move(render));
  // Its session was checked just now (the logout count read before that).
  stream->session_checked_ms_ = checked_ms;
  stream->logouts_seen_ = logouts;
  return std::unique_ptr<net::EventStream>(std::move(stream));
}

void JobEventHub::Release(const std::string& customer_id) {
  std::lock_guard<std::mutex> lock(mu_);
  --open_;
  auto it = per_customer_.find(customer_id);
  if (it != per_customer_.end() && --it->second <= 0) per_customer_.erase(it);
}

int JobEventHub::open_streams() const {
  std::lock_guard<std::mutex> lock(mu_);
  return open_;
}

int JobEventHub::open_streams_of(const std::string& customer_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = per_customer_.find(customer_id);
  return it == per_customer_.end() ? 0 : it->second;
}

uint64_t JobEventHub::Changes() {
  const int64_t now = NowMs();
  if (now - last_sync_ms_.load(std::memory_order_acquire) >= options_.store_sync_ms) {
    std::unique_lock<std::mutex> lock(sync_mu_, std::try_to_lock);
    if (lock.owns_lock() && now - last_sync_ms_.load(std::memory_order_acquire) >= options_.store_sync_ms) {
      jobs_->SyncWithStore();
      last_sync_ms_.store(now, std::memory_order_release);
    }
  }
  return jobs_->ChangeCount();
}

}  // namespace vmseal::csp
