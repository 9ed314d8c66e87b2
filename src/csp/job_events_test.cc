// The console's live job streams (csp/job_events.h): what a poll costs in
// store reads and session checks, what it sees, and the caps.
#include "csp/job_events.h"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>

#include "csp/internal/test_doubles.h"
#include "csp/sqlite_db.h"
#include "store/fs_store.h"
#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::vmseal::csp::testing::FakeKmsClient;
using ::vmseal::csp::testing::FakeVerifier;
using ::vmseal::csp::testing::kSealedMagic;
using ::vmseal::testing::TempDir;

// The job half of the portal database, counting the reads of other
// replicas' writes (what a poll used to cost per stream).
class CountingStateStore : public StateStore {
 public:
  explicit CountingStateStore(StateStore* inner) : inner_(inner) {}
  StatusOr<int64_t> PutJob(const StoredJob& job) override { return inner_->PutJob(job); }
  StatusOr<std::vector<StoredJob>> LoadJobsSince(int64_t seq) override {
    loads_.fetch_add(1);
    return inner_->LoadJobsSince(seq);
  }
  Status PutHost(const StoredHost& host) override { return inner_->PutHost(host); }
  StatusOr<std::vector<StoredHost>> LoadHosts() override { return inner_->LoadHosts(); }
  int loads() const { return loads_.load(); }

 private:
  StateStore* const inner_;
  std::atomic<int> loads_{0};
};

class JobEventsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto st = store::FsObjectStore::Create({dir_.File("objects"), nullptr});
    ASSERT_OK(st);
    store_ = std::move(st).value();
    auto up = store::UploadSessions::Create({dir_.File("staging")}, store_.get());
    ASSERT_OK(up);
    uploads_ = std::move(up).value();
    auto db = SqlitePortalDb::Open(dir_.File("portal.db"));
    ASSERT_OK(db);
    db_ = std::move(db).value();
    counting_ = std::make_unique<CountingStateStore>(db_.get());
    auto svc = ImageService::Create({}, db_.get(), store_.get(), uploads_.get(), &verifier_, &clock_);
    ASSERT_OK(svc);
    images_ = std::move(svc).value();
    hosts_ = std::make_unique<HostRegistry>(HostRegistry::Options{300}, &clock_);
    ASSERT_OK(hosts_->AttachStore(db_.get()));
    scheduler_ = std::make_unique<Scheduler>(hosts_.get(), &kms_, &clock_);
    jobs_ = std::make_unique<JobManager>(JobManager::Options{}, images_.get(), hosts_.get(),
                                         scheduler_.get(), &clock_);
    ASSERT_OK(jobs_->AttachStore(counting_.get()));
    Accounts::Options ao;
    ao.argon2_t_cost = 1;
    ao.argon2_m_cost_kib = 64;
    auto acc = Accounts::Create(ao, db_.get(), &clock_, &kms_);
    ASSERT_OK(acc);
    accounts_ = std::move(acc).value();
    NewCustomer(&alice_token_, &alice_, &alice_job_);
    NewCustomer(&bob_token_, &bob_, &bob_job_);
  }

  void NewCustomer(SecretBytes* token, Principal* who, std::string* job_id) {
    auto r = accounts_->Register({});
    ASSERT_OK(r);
    auto login = accounts_->Login({r->login_id, r->password.Clone()});
    ASSERT_OK(login);
    *token = login->token.Clone();
    *who = *accounts_->Authenticate(*token);
    const std::string package = std::string(kSealedMagic) + "disk";
    store::StringReader reader(package);
    CommitUploadRequest req;
    req.name = "web";
    auto img = images_->Upload(*who, req, reader);
    ASSERT_OK(img);
    auto job = jobs_->Launch(*who, {img->image_id});
    ASSERT_OK(job);
    *job_id = job->job_id;
  }

  std::shared_ptr<JobEventHub> Hub(JobEventHub::Options o = {}) {
    o.now_ms = [this] { return now_ms_.load(); };
    return JobEventHub::Create(o, jobs_.get(), nullptr, accounts_.get());
  }
  // `who` as the route builds it: the session looked up (counted).
  JobEventHub::Who WhoFor(const SecretBytes& token) {
    return [this, &token]() -> StatusOr<Principal> {
      session_checks_.fetch_add(1);
      return accounts_->Authenticate(token);
    };
  }
  static std::string Render(const Job& j) {
    return std::string(JobStateName(j.state)) + " " + std::to_string(j.trust_events.size());
  }
  static std::string Poll(net::EventStream& s, bool* done = nullptr) {
    bool d = false;
    auto out = s.Next(&d);
    if (done != nullptr) *done = d;
    return out.ok() ? *out : "error: " + out.status().ToString();
  }

  TempDir dir_;
  FakeClock clock_;
  FakeVerifier verifier_;
  FakeKmsClient kms_;
  std::unique_ptr<store::FsObjectStore> store_;
  std::unique_ptr<store::UploadSessions> uploads_;
  std::unique_ptr<SqlitePortalDb> db_;
  std::unique_ptr<CountingStateStore> counting_;
  std::unique_ptr<ImageService> images_;
  std::unique_ptr<HostRegistry> hosts_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<Accounts> accounts_;
  SecretBytes alice_token_, bob_token_;
  Principal alice_, bob_;
  std::string alice_job_, bob_job_;
  std::atomic<int64_t> now_ms_{1000000};
  std::atomic<int> session_checks_{0};
};

TEST_F(JobEventsTest, EightStreamsPolledForTenSecondsShareOneStoreReadPerInterval) {
  auto hub = Hub();
  std::vector<std::unique_ptr<net::EventStream>> streams;
  for (int i = 0; i < 8; ++i) {
    auto s = hub->Open(WhoFor(alice_token_), alice_job_, Render);
    ASSERT_OK(s);
    streams.push_back(std::move(s).value());
  }
  const int loads_before = counting_->loads();
  const int checks_before = session_checks_.load();
  // 10 s of polls every 500 ms: 8 streams x 20 polls.
  int job_events = 0;
  for (int poll = 0; poll < 20; ++poll) {
    for (auto& s : streams) {
      if (Poll(*s).find("event: job") != std::string::npos) ++job_events;
    }
    now_ms_ += 500;
  }
  EXPECT_EQ(job_events, 8);  // each stream's first poll; nothing changed since
  // One store read per interval for all streams (was: one per stream per
  // poll, 160); a session check per stream every 5 s (was: 160).
  EXPECT_LE(counting_->loads() - loads_before, 20);
  EXPECT_GE(counting_->loads() - loads_before, 19);
  EXPECT_LE(session_checks_.load() - checks_before, 8 * 2);
}

TEST_F(JobEventsTest, AChangeOnThisReplicaIsSentAtTheNextPollWithoutAStoreRead) {
  auto hub = Hub();
  auto s = hub->Open(WhoFor(alice_token_), alice_job_, Render);
  ASSERT_OK(s);
  EXPECT_THAT(Poll(**s), HasSubstr("event: job\ndata: queued 0"));
  now_ms_ += 600;
  EXPECT_EQ(Poll(**s), "");  // the interval's store read: nothing new
  const int loads = counting_->loads();
  ASSERT_OK(jobs_->AddTrustEvent(alice_job_, "trust_lost: host h1"));
  const int loads_after_write = counting_->loads();
  // Same millisecond: no store read is due, the change is seen in-process.
  EXPECT_THAT(Poll(**s), HasSubstr("id: 2\nevent: job\ndata: queued 1"));
  EXPECT_EQ(counting_->loads(), loads_after_write);
  EXPECT_GE(loads_after_write, loads);
}

TEST_F(JobEventsTest, AChangeByAnotherReplicaIsSentAfterTheStoreInterval) {
  auto hub = Hub();
  auto s = hub->Open(WhoFor(alice_token_), alice_job_, Render);
  ASSERT_OK(s);
  EXPECT_THAT(Poll(**s), HasSubstr("data: queued 0"));
  // Replica B on the same database changes the job.
  auto db_b = SqlitePortalDb::Open(dir_.File("portal.db"));
  ASSERT_OK(db_b);
  HostRegistry hosts_b(HostRegistry::Options{300}, &clock_);
  ASSERT_OK(hosts_b.AttachStore(db_b->get()));
  Scheduler scheduler_b(&hosts_b, &kms_, &clock_);
  JobManager jobs_b(JobManager::Options{}, images_.get(), &hosts_b, &scheduler_b, &clock_);
  ASSERT_OK(jobs_b.AttachStore(db_b->get()));
  ASSERT_OK(jobs_b.AddTrustEvent(alice_job_, "trust_lost: seen by replica b"));
  now_ms_ += 100;
  EXPECT_EQ(Poll(**s), "");  // within the interval: not read yet
  now_ms_ += 400;
  EXPECT_THAT(Poll(**s), HasSubstr("event: job\ndata: queued 1"));
}

TEST_F(JobEventsTest, StreamsAreCappedPerCustomerAndPerReplica) {
  JobEventHub::Options o;
  o.max_streams_per_customer = 2;
  o.max_streams = 3;
  auto hub = Hub(o);
  auto a1 = hub->Open(WhoFor(alice_token_), alice_job_, Render);
  auto a2 = hub->Open(WhoFor(alice_token_), alice_job_, Render);
  ASSERT_OK(a1);
  ASSERT_OK(a2);
  auto a3 = hub->Open(WhoFor(alice_token_), alice_job_, Render);
  EXPECT_EQ(a3.status().code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(a3.status().message(), HasSubstr("for this account"));
  // Alice's cap leaves Bob his streams.
  auto b1 = hub->Open(WhoFor(bob_token_), bob_job_, Render);
  ASSERT_OK(b1);
  auto b2 = hub->Open(WhoFor(bob_token_), bob_job_, Render);
  EXPECT_EQ(b2.status().code(), StatusCode::kUnavailable);  // the replica's cap
  EXPECT_EQ(hub->open_streams(), 3);
  EXPECT_EQ(hub->open_streams_of(alice_.customer_id), 2);
  // A closed stream frees its place.
  a1->reset();
  EXPECT_EQ(hub->open_streams_of(alice_.customer_id), 1);
  auto a4 = hub->Open(WhoFor(alice_token_), alice_job_, Render);
  EXPECT_OK(a4);
  EXPECT_EQ(hub->open_streams(), 3);
}

TEST_F(JobEventsTest, AnotherCustomersJobCannotBeStreamedAndTakesNoPlace) {
  auto hub = Hub();
  auto s = hub->Open(WhoFor(bob_token_), alice_job_, Render);
  EXPECT_EQ(s.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(hub->open_streams(), 0);
  EXPECT_EQ(hub->open_streams_of(bob_.customer_id), 0);
}

TEST_F(JobEventsTest, ALogoutHereEndsTheStreamAtTheNextPoll) {
  auto hub = Hub();
  auto s = hub->Open(WhoFor(alice_token_), alice_job_, Render);
  ASSERT_OK(s);
  EXPECT_THAT(Poll(**s), HasSubstr("event: job"));
  const int checks = session_checks_.load();
  EXPECT_EQ(Poll(**s), "");
  EXPECT_EQ(session_checks_.load(), checks);  // no session read at a quiet poll
  ASSERT_OK(accounts_->Logout(alice_token_));
  bool done = false;
  auto next = (*s)->Next(&done);
  EXPECT_EQ(next.status().code(), StatusCode::kUnauthenticated);
  EXPECT_THAT(next.status().message(), Not(HasSubstr("vst_")));
}

}  // namespace
}  // namespace vmseal::csp
