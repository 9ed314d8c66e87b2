// Portal state with 100,000 images and 100,000 jobs in the store, SQLite
// and PostgreSQL side by side in one run (issue 17):
//   - jobs created and placed per second (JobManager::Launch: the job
//     written queued, claimed, granted and written placed);
//   - jobs completed per second (the host's four progress reports to
//     running, each one write);
//   - p99 of the customer's list calls (jobs and images of a customer with
//     100 of each);
//   - restart: a portal loading every job and host from the store;
//   - failover: replica A changes a job and is dropped ("killed"); time
//     until replica B, on the same store, serves the customer the change.
// The KMS is the in-process test double (its latency is not what is
// measured here); PostgreSQL is the real server of the PG test harness on
// loopback. Backends alternate S P P S ...; median and spread per backend
// (bench/internal/abba.h).
//
//   cmake --build build --target portal_bench && build/bench/portal_bench [rounds]
#include <libpq-fe.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "bench/internal/abba.h"
#include "csp/internal/test_doubles.h"
#include "csp/jobs.h"
#include "csp/sqlite_db.h"
#include "csp/state_store.h"
#include "store/fs_store.h"
#include "testing/pg_harness.h"
#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using Clock_ = std::chrono::steady_clock;
constexpr int kCustomers = 1000;
constexpr int kPerCustomer = 100;  // 100,000 images and 100,000 jobs
constexpr int kLaunchesPerRound = 300;
constexpr int kListCalls = 200;

double Seconds(Clock_::time_point a, Clock_::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string CustomerId(int c) { return "cust-" + std::to_string(c); }
std::string ImageId(int c, int i) { return "img-" + std::to_string(c) + "-" + std::to_string(i); }

Job OldJob(int c, int i) {
  Job j;
  j.job_id = "job-old-" + std::to_string(c) + "-" + std::to_string(i);
  j.customer_id = CustomerId(c);
  j.image_id = ImageId(c, i);
  j.object_key = "images/" + j.customer_id + "/" + j.image_id;
  j.state = JobState::kDeleted;
  j.end_reason = "stopped_by_customer";
  j.created_unix = j.updated_unix = 1'700'000'000;
  return j;
}

void Die(const std::string& what) {
  std::fprintf(stderr, "portal_bench: %s\n", what.c_str());
  std::exit(1);
}

// Bulk preload in one transaction (the portal's API writes one row per
// transaction; this is only the fixture).
void PreloadSqlite(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) Die("sqlite open");
  sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
  sqlite3_stmt* cust = nullptr;
  sqlite3_stmt* img = nullptr;
  sqlite3_stmt* job = nullptr;
  sqlite3_prepare_v2(db, "INSERT INTO customers(customer_id, login_id, password_hash, created_unix) VALUES(?,?,'x',1)", -1, &cust, nullptr);
  sqlite3_prepare_v2(db, "INSERT INTO images(image_id, customer_id, name, object_key, size_bytes, sha256, policy_json, created_unix) VALUES(?,?,'web',?,4096,'00','{}',?)", -1, &img, nullptr);
  sqlite3_prepare_v2(db, "INSERT INTO jobs(job_id, customer_id, state, host_id, updated_unix, record, version, seq) VALUES(?,?,'deleted','',1,?,1,?)", -1, &job, nullptr);
  int64_t seq = 0;
  for (int c = 0; c < kCustomers; ++c) {
    const std::string cid = CustomerId(c);
    sqlite3_bind_text(cust, 1, cid.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(cust, 2, ("login-" + cid).c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_step(cust);
    sqlite3_reset(cust);
    for (int i = 0; i < kPerCustomer; ++i) {
      const std::string iid = ImageId(c, i);
      sqlite3_bind_text(img, 1, iid.c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_text(img, 2, cid.c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_text(img, 3, ("images/" + cid + "/" + iid).c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_int64(img, 4, i);
      if (sqlite3_step(img) != SQLITE_DONE) Die(std::string("sqlite preload: ") + sqlite3_errmsg(db));
      sqlite3_reset(img);
      const Job j = OldJob(c, i);
      sqlite3_bind_text(job, 1, j.job_id.c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_text(job, 2, cid.c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_text(job, 3, JobToRecord(j).c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_int64(job, 4, ++seq);
      if (sqlite3_step(job) != SQLITE_DONE) Die(std::string("sqlite preload: ") + sqlite3_errmsg(db));
      sqlite3_reset(job);
    }
  }
  sqlite3_finalize(cust);
  sqlite3_finalize(img);
  sqlite3_finalize(job);
  if (sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) Die("sqlite commit");
  sqlite3_close(db);
}

void PgRun(PGconn* c, const char* sql, const std::vector<std::string>& params) {
  std::vector<const char*> v;
  for (const auto& p : params) v.push_back(p.c_str());
  PGresult* r = PQexecParams(c, sql, static_cast<int>(v.size()), nullptr, v.data(), nullptr,
                             nullptr, 0);
  const ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) Die(std::string("pg preload: ") + PQresultErrorMessage(r));
  PQclear(r);
}

void PreloadPostgres(const std::string& url) {
  PGconn* c = PQconnectdb(url.c_str());
  if (PQstatus(c) != CONNECTION_OK) Die("pg connect");
  PgRun(c, "BEGIN", {});
  for (int cu = 0; cu < kCustomers; ++cu) {
    const std::string cid = CustomerId(cu);
    PgRun(c, "INSERT INTO customers(customer_id, login_id, password_hash, created_unix) VALUES($1,$2,'x',1)",
          {cid, "login-" + cid});
    for (int i = 0; i < kPerCustomer; ++i) {
      const std::string iid = ImageId(cu, i);
      PgRun(c, "INSERT INTO images(image_id, customer_id, name, object_key, size_bytes, sha256, policy_json, created_unix) VALUES($1,$2,'web',$3,4096,'00','{}',$4)",
            {iid, cid, "images/" + cid + "/" + iid, std::to_string(i)});
      const Job j = OldJob(cu, i);
      PgRun(c, "INSERT INTO jobs(job_id, customer_id, state, host_id, updated_unix, record, version, seq) VALUES($1,$2,'deleted','',1,$3,1,nextval('jobs_seq'))",
            {j.job_id, cid, JobToRecord(j)});
    }
  }
  PgRun(c, "COMMIT", {});
  PQfinish(c);
}

struct Backend {
  std::string name;
  std::string url;          // "" for SQLite
  std::string sqlite_path;  // the file for SQLite
};

// One round's figures on one backend.
struct Figures {
  double launches_per_s = 0, completions_per_s = 0, list_p99_ms = 0, restart_s = 0, failover_ms = 0;
};

// One portal's services on `backend`'s store.
struct Portal {
  std::unique_ptr<PortalStore> db;
  std::unique_ptr<ImageService> images;
  std::unique_ptr<HostRegistry> hosts;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<JobManager> jobs;
};

Portal OpenPortal(const Backend& b, store::ObjectStore* objects, store::UploadSessions* uploads,
                  const PackageVerifier* verifier, KmsClient* kms) {
  Portal p;
  auto db = OpenPortalStore(b.url, b.sqlite_path);
  if (!db.ok()) Die(db.status().ToString());
  p.db = std::move(db).value();
  auto images = ImageService::Create({}, p.db.get(), objects, uploads, verifier, Clock::Real());
  if (!images.ok()) Die(images.status().ToString());
  p.images = std::move(images).value();
  p.hosts = std::make_unique<HostRegistry>(HostRegistry::Options{300}, Clock::Real());
  if (Status s = p.hosts->AttachStore(p.db.get()); !s.ok()) Die(s.ToString());
  p.scheduler = std::make_unique<Scheduler>(p.hosts.get(), kms, Clock::Real());
  p.jobs = std::make_unique<JobManager>(JobManager::Options{}, p.images.get(), p.hosts.get(),
                                        p.scheduler.get(), Clock::Real());
  if (Status s = p.jobs->AttachStore(p.db.get()); !s.ok()) Die(s.ToString());
  return p;
}

using bench::Percentile;

// One round on `b`; `round` (unique per backend) picks customers no earlier
// round used.
Figures Round(const Backend& b, int round, store::ObjectStore* objects, store::UploadSessions* uploads,
           const PackageVerifier* verifier, testing::FakeKmsClient* kms) {
  Figures f;
  auto t0 = Clock_::now();
  Portal p = OpenPortal(b, objects, uploads, verifier, kms);
  f.restart_s = Seconds(t0, Clock_::now());
  for (int h = 0; h < 4; ++h) {
    const std::string id = "bench-host-" + std::to_string(h);
    if (Status s = p.hosts->Register({id, 4096, {}}); !s.ok()) Die(s.ToString());
    kms->SetEligibility(id, true, "ok");
  }
  // Launch on the images of customers no earlier round used.
  std::vector<Job> launched;
  auto t1 = Clock_::now();
  for (int i = 0; i < kLaunchesPerRound; ++i) {
    const int c = 1 + (round * kLaunchesPerRound + i) % (kCustomers - 1);
    auto job = p.jobs->Launch({CustomerId(c)}, {ImageId(c, i % kPerCustomer)});
    if (!job.ok() || job->state != JobState::kPlaced) Die("launch: " + job.status().ToString());
    launched.push_back(*job);
  }
  auto t2 = Clock_::now();
  for (const Job& j : launched) {
    for (JobState s : {JobState::kFetching, JobState::kAttesting, JobState::kDecrypting,
                       JobState::kRunning}) {
      auto r = p.jobs->ReportProgress(j.host_id, {j.job_id, s});
      if (!r.ok()) Die("progress: " + r.status().ToString());
    }
  }
  auto t3 = Clock_::now();
  f.launches_per_s = kLaunchesPerRound / Seconds(t1, t2);
  f.completions_per_s = kLaunchesPerRound / Seconds(t2, t3);
  // The customer's list calls: customer 0 has 100 images and 100 jobs.
  std::vector<double> ms;
  for (int i = 0; i < kListCalls; ++i) {
    auto a = Clock_::now();
    auto jobs = p.jobs->ListJobs({CustomerId(0)});
    auto images = p.images->ListImages({CustomerId(0)});
    if (!jobs.ok() || !images.ok() || jobs->size() != kPerCustomer ||
        images->size() != kPerCustomer) {
      Die("list calls");
    }
    ms.push_back(Seconds(a, Clock_::now()) * 1000);
  }
  f.list_p99_ms = Percentile(ms, 0.99);
  // Failover: replica B on the same store; A stops a VM and is dropped.
  Portal replica_b = OpenPortal(b, objects, uploads, verifier, kms);
  const Job& j = launched.front();
  auto stopped = p.jobs->StopVm({j.customer_id}, j.job_id);
  if (!stopped.ok()) Die("stop: " + stopped.status().ToString());
  auto t4 = Clock_::now();
  p = Portal{};
  for (;;) {
    auto seen = replica_b.jobs->GetJob({j.customer_id}, j.job_id);
    if (seen.ok() && seen->state == JobState::kStopping) break;
    if (Seconds(t4, Clock_::now()) > 10) Die("replica B never saw the change");
  }
  f.failover_ms = Seconds(t4, Clock_::now()) * 1000;
  return f;
}

// "median [min..max]" of `v`, the median printed with `fmt`.
std::string Summary(const std::vector<double>& v, const char* fmt) {
  const bench::Spread s = bench::Summarize(v);
  char buf[128];
  std::snprintf(buf, sizeof buf, fmt, s.median);
  std::string out = buf;
  std::snprintf(buf, sizeof buf, " [%.3g..%.3g]", s.min, s.max);
  return out + buf;
}

}  // namespace
}  // namespace vmseal::csp

int main(int argc, char** argv) {
  using namespace vmseal;
  using namespace vmseal::csp;
  const int rounds = argc > 1 ? std::max(2, std::atoi(argv[1])) : 4;
  spdlog::set_level(spdlog::level::warn);
  vmseal::testing::TempDir dir;
  auto objects = store::FsObjectStore::Create({dir.File("objects"), nullptr});
  if (!objects.ok()) Die(objects.status().ToString());
  auto uploads = store::UploadSessions::Create({dir.File("staging")}, objects->get());
  if (!uploads.ok()) Die(uploads.status().ToString());
  csp::testing::FakeVerifier verifier;
  csp::testing::FakeKmsClient kms;
  auto pg = vmseal::testing::PgHarness::Start();
  if (!pg.ok()) Die("postgres: " + pg.status().ToString());
  auto url = (*pg)->CreateDatabase("portal_bench");
  if (!url.ok()) Die(url.status().ToString());
  Backend sqlite{"sqlite", "", dir.File("portal.db")};
  Backend postgres{"postgres", *url, ""};
  for (Backend* b : {&sqlite, &postgres}) {
    auto t = std::chrono::steady_clock::now();
    { auto db = OpenPortalStore(b->url, b->sqlite_path); if (!db.ok()) Die(db.status().ToString()); }
    if (b->url.empty()) PreloadSqlite(b->sqlite_path); else PreloadPostgres(b->url);
    std::printf("preloaded %s: %d images and %d jobs in %.1f s\n", b->name.c_str(),
                kCustomers * kPerCustomer, kCustomers * kPerCustomer,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count());
  }
  // A warm-up round of each (not counted), then S P P S ...
  int round = 0;
  auto run_on = [&](const Backend& b) {
    return [&, backend = &b] { return Round(*backend, round++, objects->get(), uploads->get(), &verifier, &kms); };
  };
  const auto s = bench::RunAbba({.warm_up_a = 1, .warm_up_b = 1, .runs = rounds}, run_on(sqlite),
                                run_on(postgres));
  std::printf("\nportal_bench: %d rounds per backend (alternating), %d launches per round, "
              "%d list calls; 100,000 images + 100,000 jobs preloaded; load average %s "
              "(shared, noisy machine)\n",
              rounds, kLaunchesPerRound, kListCalls, bench::LoadAverage().c_str());
  std::printf("%-34s %-28s %-28s %s\n", "figure (median [min..max])", "SQLite (reference)",
              "PostgreSQL", "PG/SQLite");
  auto row = [&](const char* name, double Figures::*figure, const char* fmt) {
    const std::vector<double> sq = bench::Column(s.a, figure), pq = bench::Column(s.b, figure);
    std::printf("%-34s %-28s %-28s %.2f\n", name, Summary(sq, fmt).c_str(), Summary(pq, fmt).c_str(),
                bench::Median(pq) / bench::Median(sq));
  };
  row("jobs created+placed per s", &Figures::launches_per_s, "%.0f");
  row("jobs completed per s (4 reports)", &Figures::completions_per_s, "%.0f");
  row("customer list calls p99 ms", &Figures::list_p99_ms, "%.2f");
  row("restart: load 100k jobs s", &Figures::restart_s, "%.2f");
  row("failover: replica B serves ms", &Figures::failover_ms, "%.2f");
  return 0;
}
