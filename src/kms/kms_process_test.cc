// Process-level tests: the real `vmseal kms` binary, started on port 0 and
// driven over HTTPS with mTLS, killed with SIGKILL mid-write.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <atomic>
#include <cstdlib>
#include <chrono>
#include <mutex>
#include <thread>

#include "base/env.h"
#include "crypto/primitives.h"
#include "kms/kek.h"
#include "kms/pkcs11_kek.h"
#include "kms/store.h"
#include "kms/testing/seed_keys.h"
#include "net/https_client.h"
#include "testing/pg_harness.h"
#include "testing/test_util.h"
#include "tlog/checkpoint.h"
#include "tlog/note.h"

extern char** environ;

namespace vmseal::kms {
namespace {

using nlohmann::json;
using testing::RunCommand;
using testing::TempDir;
using testing::VmsealBinary;

SecretBytes SecretFile(const std::string& path) {
  std::string text = testing::ReadFileOrDie(path);
  SecretBytes out(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  return out;
}

class KmsProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    InitDir();
    if (HasFatalFailure()) return;
    StartServer();
  }

  void InitDir() {
    dir_ = tmp_.File("kms");
    ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "init", "--dir", dir_}, &out_), 0) << out_;
    ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "issue-identity", "--dir", dir_, "--role",
                          "portal", "--name", "portal-1", "--out", dir_ + "/portal"}, &out_), 0)
        << out_;
    ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "issue-identity", "--dir", dir_, "--role", "host",
                          "--name", "host-1", "--out", dir_ + "/host"}, &out_), 0)
        << out_;
  }

  void TearDown() override { StopServer(SIGTERM); }

  void StartServer() { StartServerAt(dir_ + "/port", dir_ + "/serve.log", {}, &pid_, &port_); }

  // Another `kms serve` on this kms.json (a replica: give --store).
  void StartServerAt(const std::string& port_file, const std::string& log, const std::vector<std::string>& extra,
                     pid_t* pid, int* port) {
    ::unlink(port_file.c_str());
    std::vector<std::string> argv = {VmsealBinary(), "kms", "serve", "--config",
                                     dir_ + "/kms.json", "--port", "0", "--port-file", port_file};
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    ASSERT_EQ(posix_spawn(pid, args[0], &actions, nullptr, args.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!Env::Default()->FileExists(port_file)) {
      int status = 0;
      ASSERT_EQ(::waitpid(*pid, &status, WNOHANG), 0) << testing::ReadFileOrDie(log);
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "server did not start";
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    *port = std::stoi(testing::ReadFileOrDie(port_file));
  }

  void StopServer(int sig) { StopPid(sig, &pid_); }
  static void StopPid(int sig, pid_t* pid) {
    if (*pid <= 0) return;
    ::kill(*pid, sig);
    int status = 0;
    ::waitpid(*pid, &status, 0);
    *pid = -1;
  }

  std::unique_ptr<net::HttpsClient> Client(const std::string& identity, int port = 0) {
    net::HttpsClient::Options options;
    options.port = port != 0 ? port : port_;
    options.ca_pem = testing::ReadFileOrDie(dir_ + "/ca.pem");
    options.timeout_seconds = 10;
    if (!identity.empty()) {
      options.cert_pem = testing::ReadFileOrDie(dir_ + "/" + identity + ".pem");
      options.key_pem = SecretFile(dir_ + "/" + identity + "-key.pem");
    }
    auto client = net::HttpsClient::Create(std::move(options));
    EXPECT_OK(client);
    return *std::move(client);
  }

  // `vmseal kms rotate-kek` against this server as the operator.
  std::vector<std::string> RotateKekArgs(const std::vector<std::string>& new_kek, const std::vector<int>& more_ports = {}) {
    std::vector<std::string> argv = {VmsealBinary(), "kms", "rotate-kek", "--config", dir_ + "/kms.json",
                                     "--url", "https://127.0.0.1:" + std::to_string(port_),
                                     "--ca", dir_ + "/ca.pem", "--cert", dir_ + "/operator.pem",
                                     "--key", dir_ + "/operator-key.pem"};
    for (int p : more_ports) {
      argv.push_back("--url");
      argv.push_back("https://127.0.0.1:" + std::to_string(p));
    }
    argv.insert(argv.end(), new_kek.begin(), new_kek.end());
    return argv;
  }

  // How many customer keys each KEK wraps, read from the store directly.
  std::map<std::string, int64_t> KeysByKek(Store* open = nullptr) {
    std::unique_ptr<Store> own;
    if (open == nullptr) {
      auto store = Store::Open(dir_ + "/kms.db");
      EXPECT_OK(store);
      if (!store.ok()) return {};
      own = *std::move(store);
      open = own.get();
    }
    std::map<std::string, int64_t> out;
    auto counts = open->CountKeysByKek();
    EXPECT_OK(counts);
    if (counts.ok()) out.insert(counts->begin(), counts->end());
    return out;
  }

  // Keys created through the API (portal role) while something else runs;
  // every one must be acknowledged.
  struct KeyCreator {
    std::atomic<bool> stop{false};
    std::atomic<int> created{0}, failed{0};
    std::string first_error;
    std::thread thread;
  };
  // Each creator its own customer: a customer's key versions are numbered
  // in one transaction per key, and two replicas creating keys of one
  // customer at once collide on the version (ALREADY_EXISTS), which is not
  // what these tests look at.
  void StartCreating(KeyCreator* c, int port = 0, const std::string& customer = "acme") {
    c->thread = std::thread([this, c, port, customer] {
      auto client = Client("portal", port);
      while (!c->stop) {
        auto key = client->Post("/v1/customers/" + customer + "/keys", json{{"algorithm", "X25519"}});
        if (key.ok()) {
          ++c->created;
        } else {
          if (c->failed++ == 0) c->first_error = key.status().ToString();
        }
      }
    });
  }

  TempDir tmp_;
  std::string dir_;
  std::string out_;
  pid_t pid_ = -1;
  int port_ = 0;
};

TEST_F(KmsProcessTest, PortalCreatesCustomerKey) {
  auto key = Client("portal")->Post("/v1/customers/acme/keys", json{{"algorithm", "RSA-3072"}});
  ASSERT_OK(key);
  EXPECT_EQ((*key)["customer_id"], "acme");
  EXPECT_EQ((*key)["algorithm"], "RSA-3072");
  EXPECT_NE((*key)["public_key_pem"].get<std::string>().find("BEGIN PUBLIC KEY"), std::string::npos);
  EXPECT_NE((*key)["certificate_pem"].get<std::string>().find("BEGIN CERTIFICATE"),
            std::string::npos);
  EXPECT_EQ(key->dump().find("PRIVATE"), std::string::npos);
}

TEST_F(KmsProcessTest, ClientWithoutCertIsUnauthenticated) {
  EXPECT_STATUS(Client("")->Post("/v1/customers/acme/keys", json::object()),
                StatusCode::kUnauthenticated, "client certificate");
}

TEST_F(KmsProcessTest, HostCertCannotCreateKeys) {
  EXPECT_STATUS(Client("host")->Post("/v1/customers/acme/keys", json::object()),
                StatusCode::kPermissionDenied, "portal role");
}

TEST_F(KmsProcessTest, OperatorReadsAndVerifiesAudit) {
  ASSERT_OK(Client("portal")->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
  auto verify = Client("operator")->Get("/v1/audit/verify");
  ASSERT_OK(verify);
  EXPECT_EQ((*verify)["valid"], true);
  EXPECT_EQ((*verify)["count"], 3);  // the nonce and log keys' creation (first start), the key's
  EXPECT_STATUS(Client("portal")->Get("/v1/audit"), StatusCode::kPermissionDenied, "operator");
}

TEST_F(KmsProcessTest, MalformedJsonIs400AndServerKeepsServing) {
  auto client = Client("portal");
  EXPECT_STATUS(client->PostRaw("/v1/customers/acme/keys", "{\"algorithm\":", "application/json"),
                StatusCode::kInvalidArgument, "malformed JSON");
  EXPECT_STATUS(client->Post("/v1/customers/acme/keys", json{{"algorithm", 7}}),
                StatusCode::kInvalidArgument, "wrong type");
  EXPECT_OK(Client("")->Get("/healthz"));
}

TEST_F(KmsProcessTest, OversizedBodyIs413AndServerKeepsServing) {
  std::string big = "{\"algorithm\":\"" + std::string(2 << 20, 'a') + "\"}";
  auto result = Client("portal")->PostRaw("/v1/customers/acme/keys", big, "application/json");
  EXPECT_FALSE(result.ok());
  EXPECT_OK(Client("portal")->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
}

TEST_F(KmsProcessTest, MetricsCountKeysAndDenials) {
  ASSERT_OK(Client("portal")->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
  (void)Client("host")->Post("/v1/customers/acme/keys", json::object());
  auto text = Client("")->GetText("/metrics");
  ASSERT_OK(text);
  EXPECT_NE(text->find("vmseal_kms_customer_keys_created_total 1"), std::string::npos);
  EXPECT_NE(text->find("vmseal_kms_denials_total{reason=\"wrong_role\"} 1"), std::string::npos);
  EXPECT_NE(text->find("vmseal_kms_request_seconds_bucket{le=\"+Inf\"}"), std::string::npos);
}

// SIGKILL while several clients create keys: every key the server
// acknowledged is still there after a restart and the audit chain verifies.
TEST_F(KmsProcessTest, SigkillLosesNoAcknowledgedKey) {
  std::mutex mu;
  std::vector<std::string> acknowledged;
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&] {
      auto client = Client("portal");
      while (!stop) {
        auto key = client->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}});
        if (!key.ok()) continue;
        std::lock_guard<std::mutex> lock(mu);
        acknowledged.push_back((*key)["key_id"].get<std::string>());
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  StopServer(SIGKILL);
  stop = true;
  for (auto& c : clients) c.join();
  ASSERT_GT(acknowledged.size(), 5u);

  std::string out;
  ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "audit", "verify", "--config", dir_ + "/kms.json"},
                       &out), 0)
      << out;
  StartServer();
  auto client = Client("portal");
  for (const auto& id : acknowledged) {
    EXPECT_OK(client->Get("/v1/customers/acme/keys/" + id)) << id;
  }
  auto verify = Client("operator")->Get("/v1/audit/verify");
  ASSERT_OK(verify);
  EXPECT_GE((*verify)["count"].get<int64_t>(), static_cast<int64_t>(acknowledged.size()));
}

TEST_F(KmsProcessTest, AuditExportWritesJsonLines) {
  ASSERT_OK(Client("portal")->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
  ASSERT_OK(Client("portal")->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
  std::string out;
  ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "audit", "export", "--config", dir_ + "/kms.json",
                        "--out", tmp_.File("audit.jsonl")}, &out), 0)
      << out;
  std::string text = testing::ReadFileOrDie(tmp_.File("audit.jsonl"));
  // The nonce and log keys' creation on first start, then the two keys.
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 4);
  EXPECT_NE(text.find("kms.nonce_key.create"), std::string::npos);
  EXPECT_NE(text.find("kms.audit_log_key.create"), std::string::npos);
  EXPECT_NE(text.find("\"seq\":4"), std::string::npos);
}

// The transparency log through the real binary: checkpoints and proofs over
// HTTPS for authenticated callers, `kms audit checkpoint` saved by the
// operator, and `kms audit verify --checkpoint` after an attacker with the
// database deleted the newest records and rebuilt everything else.
TEST_F(KmsProcessTest, SavedCheckpointCatchesDeletedNewestRecordsThroughTheCli) {
  auto portal = Client("portal");
  ASSERT_OK(portal->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
  ASSERT_OK(portal->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
  // A customer's view, checked locally: checkpoint and an inclusion proof.
  auto cp = portal->Get("/v1/audit/checkpoint");
  ASSERT_OK(cp);
  auto verifier = tlog::NoteVerifier::Create((*cp)["log_key"].get<std::string>());
  ASSERT_OK(verifier);
  auto cp_text = (*verifier)->Open((*cp)["checkpoint"].get<std::string>());
  ASSERT_OK(cp_text);
  auto checkpoint = tlog::ParseCheckpoint(*cp_text);
  ASSERT_OK(checkpoint);
  EXPECT_EQ(checkpoint->size, 4u);
  auto incl = Client("host")->Get("/v1/audit/proofs/inclusion?seq=4&size=4");
  ASSERT_OK(incl);
  auto proof = tlog::ParseInclusionProof((*incl)["proof"].get<std::string>());
  ASSERT_OK(proof);
  EXPECT_NE(proof->extra.find("customer_key.create"), std::string::npos);
  EXPECT_OK(tlog::VerifyInclusion(proof->index, checkpoint->size, tlog::LeafHash(proof->extra), proof->hashes,
                                  checkpoint->root));
  // Authenticated callers only (the refusal is itself audited: record 5).
  EXPECT_STATUS(Client("")->Get("/v1/audit/checkpoint"), StatusCode::kUnauthenticated, "client certificate");

  // The operator saves a checkpoint with the CLI; the log grows.
  ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "audit", "checkpoint", "--config", dir_ + "/kms.json", "--out",
                        tmp_.File("saved.checkpoint")}, &out_), 0)
      << out_;
  ASSERT_OK(portal->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
  ASSERT_OK(portal->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
  auto consistency = portal->Get("/v1/audit/proofs/consistency?old=4");
  ASSERT_OK(consistency);
  auto cproof = tlog::ParseConsistencyProof((*consistency)["proof"].get<std::string>());
  ASSERT_OK(cproof);
  auto new_cp = tlog::ParseCheckpoint(*(*verifier)->Open(cproof->checkpoint));
  ASSERT_OK(new_cp);
  EXPECT_OK(tlog::VerifyConsistency(4, new_cp->size, cproof->hashes, checkpoint->root, new_cp->root));
  StopServer(SIGTERM);

  const std::vector<std::string> verify = {VmsealBinary(), "kms", "audit", "verify", "--config",
                                           dir_ + "/kms.json", "--checkpoint", tmp_.File("saved.checkpoint")};
  ASSERT_EQ(RunCommand(verify, &out_), 0) << out_;
  EXPECT_NE(out_.find("consistent with " + tmp_.File("saved.checkpoint") + " (5 records)"), std::string::npos)
      << out_;

  // Delete the newest four records (two the saved checkpoint covers), the
  // tree and the issued checkpoint: the store rebuilds a tree that agrees
  // with what is left.
  std::string out;
  if (RunCommand({"/usr/bin/sqlite3", dir_ + "/kms.db",
                  "DELETE FROM audit_log WHERE seq > 3; DELETE FROM audit_tree; "
                  "UPDATE audit_frontier SET size = 0, hashes = ''; DELETE FROM audit_checkpoint"},
                 &out) != 0) {
    GTEST_SKIP() << "sqlite3 CLI not installed";
  }
  ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "audit", "verify", "--config", dir_ + "/kms.json"}, &out_), 0)
      << out_;
  EXPECT_NE(RunCommand(verify, &out_), 0);
  EXPECT_NE(out_.find("truncated: the saved checkpoint covers 5 records but the log has only 3"),
            std::string::npos)
      << out_;
}

TEST_F(KmsProcessTest, AuditVerifyCliDetectsTamper) {
  ASSERT_OK(Client("portal")->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
  StopServer(SIGTERM);
  // Tamper with the stopped server's SQLite file (sqlite3 CLI, package sqlite3).
  std::string out;
  if (RunCommand({"/usr/bin/sqlite3", dir_ + "/kms.db",
                  "UPDATE audit_log SET record = replace(record, 'acme', 'evil')"}, &out) != 0) {
    GTEST_SKIP() << "sqlite3 CLI not installed";
  }
  EXPECT_NE(RunCommand({VmsealBinary(), "kms", "audit", "verify", "--config", dir_ + "/kms.json"},
                       &out), 0);
  EXPECT_NE(out.find("hash mismatch"), std::string::npos) << out;
}

// The operator CLI drives the API over HTTPS with the operator credential.
TEST_F(KmsProcessTest, OperatorCliManagesFlavorsPoliciesAndHosts) {
  auto cli = [&](std::vector<std::string> args, const std::string& identity = "operator") {
    std::vector<std::string> argv = {VmsealBinary(), "kms"};
    argv.insert(argv.end(), args.begin(), args.end());
    for (const std::string& a : {std::string("--url"), "https://127.0.0.1:" + std::to_string(port_),
                                 std::string("--ca"), dir_ + "/ca.pem", std::string("--cert"),
                                 dir_ + "/" + identity + ".pem", std::string("--key"),
                                 dir_ + "/" + identity + "-key.pem"}) {
      argv.push_back(a);
    }
    out_.clear();
    return RunCommand(argv, &out_, 60);
  };
  const std::string v7(64, 'b');
  ASSERT_EQ(cli({"flavor", "put", "--name", "good-boot", "--pcr", "0=" + std::string(64, 'A'),
                 "--pcr", "7=" + v7}), 0) << out_;
  ASSERT_EQ(cli({"flavor", "list"}), 0) << out_;
  EXPECT_NE(out_.find("good-boot"), std::string::npos) << out_;
  EXPECT_NE(out_.find(std::string(64, 'a')), std::string::npos) << out_;  // normalized
  // A portal credential may read flavors but not write them.
  EXPECT_NE(cli({"flavor", "put", "--name", "x", "--pcr", "0=" + v7}, "portal"), 0);
  EXPECT_NE(out_.find("operator role"), std::string::npos) << out_;
  EXPECT_NE(cli({"flavor", "put", "--name", "bad", "--pcr", "0=zz"}), 0);
  EXPECT_NE(out_.find("64 hex"), std::string::npos) << out_;

  testing::WriteFileOrDie(tmp_.File("policy.json"),
                          R"({"flavors": {"anyOf": ["good-boot"]}, "required_tags": ["region=eu-west"]})");
  ASSERT_EQ(cli({"policy", "set", "--customer", "acme", "--file", tmp_.File("policy.json")}), 0) << out_;
  ASSERT_EQ(cli({"policy", "get", "--customer", "acme", "--image", "img-1"}), 0) << out_;
  EXPECT_NE(out_.find("region=eu-west"), std::string::npos) << out_;
  testing::WriteFileOrDie(tmp_.File("bad.json"), R"({"flavors": {"anyOf": []}})");
  EXPECT_NE(cli({"policy", "set", "--customer", "acme", "--file", tmp_.File("bad.json")}), 0);

  ASSERT_EQ(cli({"host", "list"}), 0) << out_;
  auto listed = nlohmann::json::parse(out_, nullptr, false);
  ASSERT_TRUE(listed.is_object()) << out_;
  EXPECT_TRUE(listed["hosts"].empty());
  EXPECT_NE(cli({"host", "tags", "--host", "nohost", "--tag", "region=eu-west"}), 0);
  EXPECT_NE(out_.find("unknown host"), std::string::npos) << out_;
  ASSERT_EQ(cli({"host", "history", "--host", "nohost"}), 0) << out_;
  EXPECT_NE(out_.find("\"verdicts\": []"), std::string::npos) << out_;
  // Every change above is in the audit chain.
  auto verify = Client("operator")->Get("/v1/audit/verify");
  ASSERT_OK(verify);
  EXPECT_GE((*verify)["count"].get<int64_t>(), 2);
}

TEST_F(KmsProcessTest, InitRefusesToOverwrite) {
  std::string out;
  EXPECT_NE(RunCommand({VmsealBinary(), "kms", "init", "--dir", dir_}, &out), 0);
  EXPECT_NE(out.find("already initialised"), std::string::npos) << out;
}

// `kms rotate-kek` with a file KEK against the real server: every stored
// key (seeded, and created through the API during the rotation) and both
// service secrets end under the new KEK and open under it alone; the
// server keeps serving; the old KEK is retired and kms.json names the new
// one only; bad input changes nothing.
TEST_F(KmsProcessTest, RotateKekRewrapsEveryKeyWhileServingAndRetiresTheOldKek) {
  auto old_kek = LoadFileKek(Env::Default(), dir_ + "/kek");
  ASSERT_OK(old_kek);
  {
    auto store = Store::Open(dir_ + "/kms.db");
    ASSERT_OK(store);
    ASSERT_OK(kms_testing::SeedWrappedKeys(store->get(), **old_kek, 5000, "seed"));
  }
  ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "kek-new", "--out", dir_ + "/kek2"}, &out_), 0) << out_;
  auto new_kek = LoadFileKek(Env::Default(), dir_ + "/kek2");
  ASSERT_OK(new_kek);
  const std::string old_id = (*old_kek)->id(), new_id = (*new_kek)->id();
  ASSERT_NE(old_id, new_id);

  // Refused, changing nothing: a new KEK file readable by others, a second
  // `kek-new` over it, the routes for any role but operator.
  const std::string config_before = testing::ReadFileOrDie(dir_ + "/kms.json");
  testing::WriteFileOrDie(dir_ + "/kek-open", std::string(32, 'k'));
  ::chmod((dir_ + "/kek-open").c_str(), 0644);
  EXPECT_NE(RunCommand(RotateKekArgs({"--new-kek-file", dir_ + "/kek-open"}), &out_), 0) << out_;
  EXPECT_NE(out_.find("kek-open"), std::string::npos) << out_;
  EXPECT_NE(RunCommand({VmsealBinary(), "kms", "kek-new", "--out", dir_ + "/kek2"}, &out_), 0) << out_;
  EXPECT_EQ(testing::ReadFileOrDie(dir_ + "/kms.json"), config_before);
  EXPECT_STATUS(Client("portal")->Get("/v1/kek"), StatusCode::kPermissionDenied, "operators");
  EXPECT_STATUS(Client("host")->Post("/v1/kek/rotation", json{{"kek_id", new_id}}), StatusCode::kPermissionDenied,
                "operators");
  EXPECT_STATUS(Client("operator")->Post("/v1/kek/rotation", json{{"kek_id", new_id}}),
                StatusCode::kFailedPrecondition, "kek_not_current");
  EXPECT_STATUS(Client("operator")->Post("/v1/kek/retire", json{{"kek_id", old_id}}),
                StatusCode::kFailedPrecondition, "kek_current");

  KeyCreator creator;
  StartCreating(&creator);
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = RunCommand(RotateKekArgs({"--new-kek-file", dir_ + "/kek2"}), &out_);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  creator.stop = true;
  creator.thread.join();
  ASSERT_EQ(rc, 0) << out_;
  EXPECT_NE(out_.find("KEK rotated to " + new_id), std::string::npos) << out_;
  EXPECT_NE(out_.find("retired: " + old_id), std::string::npos) << out_;
  EXPECT_EQ(creator.failed.load(), 0) << creator.first_error;
  EXPECT_GT(creator.created.load(), 0);
  std::printf("[ figure ] rotate-kek of %d keys through the real server: %.2f s (%d keys created meanwhile)\n",
              5000 + creator.created.load(), seconds, creator.created.load());

  // The store: every key under the new KEK; it opens every one; the old opens none.
  auto counts = KeysByKek();
  EXPECT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts[new_id], 5000 + creator.created.load());
  {
    auto store = Store::Open(dir_ + "/kms.db");
    ASSERT_OK(store);
    auto opened = kms_testing::OpenEveryKey(store->get(), **new_kek);
    ASSERT_OK(opened);
    EXPECT_EQ(*opened, 5000 + creator.created.load());
    EXPECT_STATUS(kms_testing::OpenEveryKey(store->get(), **old_kek), StatusCode::kFailedPrecondition,
                  "kek_mismatch");
    auto secrets = (*store)->ListSecrets();
    ASSERT_OK(secrets);
    ASSERT_EQ(secrets->size(), 2u);
    for (const auto& [name, value] : *secrets) EXPECT_EQ(value.rfind(new_id + " ", 0), 0u) << name;
  }
  // kms.json: the new KEK only.
  json config = json::parse(testing::ReadFileOrDie(dir_ + "/kms.json"));
  EXPECT_EQ(config["kek_file"], dir_ + "/kek2");
  EXPECT_FALSE(config.contains("kek_previous_file"));
  // Audited; the log verifies.
  auto audit = Client("operator")->Get("/v1/audit?after=0&limit=1000");
  ASSERT_OK(audit);
  for (const char* e : {"kms.kek_rotation.start", "kms.kek_rotation.done", "kms.kek_rotation.retire"}) {
    EXPECT_NE(audit->dump().find(e), std::string::npos) << e;
  }
  // A restart with the rewritten kms.json serves (nonce and log keys open
  // under the new KEK) and the old KEK file can go.
  ASSERT_EQ(::unlink((dir_ + "/kek").c_str()), 0);
  StopServer(SIGTERM);
  StartServer();
  ASSERT_OK(Client("portal")->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
  auto verify = Client("operator")->Get("/v1/audit/verify");
  ASSERT_OK(verify);
  EXPECT_EQ((*verify)["valid"], true);
  EXPECT_NE(testing::ReadFileOrDie(dir_ + "/serve.log").find("kek " + new_id), std::string::npos);
}

// kill -9 of the KMS in the middle of the re-wrap: the restarted KMS (kms.json
// names both KEKs) opens every key and serves; running rotate-kek again
// resumes and completes.
TEST_F(KmsProcessTest, RotateKekResumesAfterTheKmsIsKilledMidRotation) {
  auto old_kek = LoadFileKek(Env::Default(), dir_ + "/kek");
  ASSERT_OK(old_kek);
  constexpr int kSeeded = 10000;
  {
    auto store = Store::Open(dir_ + "/kms.db");
    ASSERT_OK(store);
    ASSERT_OK(kms_testing::SeedWrappedKeys(store->get(), **old_kek, kSeeded, "seed"));
  }
  ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "kek-new", "--out", dir_ + "/kek2"}, &out_), 0) << out_;
  auto new_kek = LoadFileKek(Env::Default(), dir_ + "/kek2");
  ASSERT_OK(new_kek);
  const std::string old_id = (*old_kek)->id(), new_id = (*new_kek)->id();

  std::string cli_out;
  int cli_rc = 0;
  std::thread cli([&] { cli_rc = RunCommand(RotateKekArgs({"--new-kek-file", dir_ + "/kek2"}), &cli_out); });
  // Kill the server once some keys, not all, are under the new KEK.
  auto watcher = Store::Open(dir_ + "/kms.db");
  ASSERT_OK(watcher);
  int64_t moved = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    auto counts = KeysByKek(watcher->get());
    moved = counts[new_id];
    if (moved > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  StopServer(SIGKILL);
  cli.join();
  auto mid = KeysByKek();
  ASSERT_GT(mid[new_id], 0) << cli_out;
  ASSERT_GT(mid[old_id], 0) << "the re-wrap finished before the kill; seed more keys\n" << cli_out;
  EXPECT_NE(cli_rc, 0) << cli_out;
  std::printf("killed with %lld of %d keys re-wrapped\n", static_cast<long long>(mid[new_id]), kSeeded);
  json config = json::parse(testing::ReadFileOrDie(dir_ + "/kms.json"));
  EXPECT_EQ(config["kek_file"], dir_ + "/kek2");
  EXPECT_EQ(config["kek_previous_file"], dir_ + "/kek");

  // Restarted mid-rotation: serves, and every key opens by the KEK it names.
  StartServer();
  ASSERT_OK(Client("portal")->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
  auto described = Client("operator")->Get("/v1/kek");
  ASSERT_OK(described);
  EXPECT_EQ((*described)["current"], new_id);
  EXPECT_EQ((*described)["ring"].size(), 2u) << described->dump();

  ASSERT_EQ(RunCommand(RotateKekArgs({"--new-kek-file", dir_ + "/kek2"}), &out_), 0) << out_;
  EXPECT_NE(out_.find("resuming"), std::string::npos) << out_;
  auto counts = KeysByKek();
  EXPECT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts[new_id], kSeeded + 1);
  {
    auto store = Store::Open(dir_ + "/kms.db");
    ASSERT_OK(store);
    auto opened = kms_testing::OpenEveryKey(store->get(), **new_kek);
    ASSERT_OK(opened);
    EXPECT_EQ(*opened, kSeeded + 1);
  }
  StopServer(SIGTERM);
  StartServer();
  ASSERT_OK(Client("portal")->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
  std::string out;
  EXPECT_EQ(RunCommand({VmsealBinary(), "kms", "audit", "verify", "--config", dir_ + "/kms.json"}, &out), 0)
      << out;
}

// Two replicas on one PostgreSQL database keep creating keys through the
// whole rotation (each through its own server); both reload, one re-wraps,
// both retire the old KEK; every key, whichever replica wrapped it, ends
// under the new KEK and opens under it.
TEST_F(KmsProcessTest, RotateKekWithTwoReplicasOnPostgresKeepsBothServing) {
  auto pg = vmseal::testing::PgHarness::Start();
  ASSERT_OK(pg);
  auto url = (*pg)->CreateDatabase("kek_rotation");
  ASSERT_OK(url);
  StopServer(SIGTERM);
  // kms.json names the database (rotate-kek reads it); both replicas use it.
  json config = json::parse(testing::ReadFileOrDie(dir_ + "/kms.json"));
  config["store"] = *url;
  testing::WriteFileOrDie(dir_ + "/kms.json", config.dump(2));
  StartServer();
  pid_t second_pid = -1;
  int second_port = 0;
  StartServerAt(dir_ + "/port2", dir_ + "/serve2.log", {}, &second_pid, &second_port);
  auto old_kek = LoadFileKek(Env::Default(), dir_ + "/kek");
  ASSERT_OK(old_kek);
  {
    auto store = Store::Open(*url);
    ASSERT_OK(store);
    ASSERT_OK(kms_testing::SeedWrappedKeys(store->get(), **old_kek, 5000, "seed"));
  }
  ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "kek-new", "--out", dir_ + "/kek2"}, &out_), 0) << out_;
  auto new_kek = LoadFileKek(Env::Default(), dir_ + "/kek2");
  ASSERT_OK(new_kek);
  KeyCreator a, b;
  StartCreating(&a, 0, "acme-a");
  StartCreating(&b, second_port, "acme-b");
  const int rc = RunCommand(RotateKekArgs({"--new-kek-file", dir_ + "/kek2"}, {second_port}), &out_);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // both create under the new KEK too
  a.stop = b.stop = true;
  a.thread.join();
  b.thread.join();
  ASSERT_EQ(rc, 0) << out_;
  EXPECT_EQ(a.failed.load(), 0) << a.first_error;
  EXPECT_EQ(b.failed.load(), 0) << b.first_error;
  EXPECT_GT(a.created.load(), 0);
  EXPECT_GT(b.created.load(), 0);
  auto store = Store::Open(*url);
  ASSERT_OK(store);
  auto counts = KeysByKek(store->get());
  EXPECT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts[(*new_kek)->id()], 5000 + a.created.load() + b.created.load());
  auto opened = kms_testing::OpenEveryKey(store->get(), **new_kek);
  ASSERT_OK(opened);
  EXPECT_EQ(*opened, 5000 + a.created.load() + b.created.load());
  // Both replicas hold the new KEK alone now.
  for (int port : {port_, second_port}) {
    auto d = Client("operator", port)->Get("/v1/kek");
    ASSERT_OK(d);
    EXPECT_EQ((*d)["ring"], json::array({(*new_kek)->id()})) << d->dump();
  }
  StopPid(SIGTERM, &second_pid);
}

// The KEK in a SoftHSM2 token (kek_pkcs11 in kms.json): keys created through
// the API survive a restart of the real server, the PIN comes only from the
// environment and never reaches the log.
class KmsPkcs11ProcessTest : public KmsProcessTest {
 protected:
  static constexpr const char* kModule = "/usr/lib/softhsm/libsofthsm2.so";
  static constexpr const char* kPinEnv = "VMSEAL_TEST_KMS_PKCS11_PIN";
  static constexpr const char* kPin = "73194682";

  void SetUp() override {
    InitDir();
    if (HasFatalFailure()) return;
    // SoftHSM2 with its token directory in the temp dir; the server inherits
    // SOFTHSM2_CONF and the PIN variable through its environment.
    std::string tokens = tmp_.File("tokens");
    ASSERT_EQ(::mkdir(tokens.c_str(), 0700), 0);
    testing::WriteFileOrDie(tmp_.File("softhsm2.conf"), "directories.tokendir = " + tokens +
                                                            "\nobjectstore.backend = file\nlog.level = ERROR\n");
    ::setenv("SOFTHSM2_CONF", tmp_.File("softhsm2.conf").c_str(), 1);
    ASSERT_EQ(RunCommand({"/usr/bin/softhsm2-util", "--init-token", "--free", "--label", "vmseal-kms",
                          "--so-pin", "5678", "--pin", kPin}, &out_), 0)
        << out_;
    ::setenv(kPinEnv, kPin, 1);
    // kms.json from init, with the file KEK replaced by the token (and the
    // file removed, so nothing can fall back to it).
    json config = json::parse(testing::ReadFileOrDie(dir_ + "/kms.json"));
    config.erase("kek_file");
    config["kek_pkcs11"] = Pkcs11Json();
    testing::WriteFileOrDie(dir_ + "/kms.json", config.dump(2));
    ASSERT_EQ(::unlink((dir_ + "/kek").c_str()), 0);
    // The key is generated in the token by the CLI, as an operator would.
    ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "kek-create", "--config", dir_ + "/kms.json"}, &out_), 0)
        << out_;
    EXPECT_NE(out_.find("KEK ready: pkcs11:vmseal-kms/vmseal-kms-kek"), std::string::npos) << out_;
    StartServer();
  }

  void TearDown() override {
    KmsProcessTest::TearDown();
    ::unsetenv(kPinEnv);
  }

  json Pkcs11Json() const {
    return {{"module_path", kModule}, {"token_label", "vmseal-kms"}, {"key_label", "vmseal-kms-kek"},
            {"pin_env", kPinEnv}};
  }

  // `kms serve` with a config that must be refused before serving.
  std::string ServeFails(const json& config) {
    testing::WriteFileOrDie(tmp_.File("bad.json"), config.dump());
    std::string out;
    EXPECT_NE(RunCommand({VmsealBinary(), "kms", "serve", "--config", tmp_.File("bad.json"), "--port", "0"},
                         &out, 60), 0)
        << out;
    return out;
  }
};

TEST_F(KmsPkcs11ProcessTest, KeysSurviveRestartUnderTheTokenKek) {
  auto created = Client("portal")->Post("/v1/customers/acme/keys", json{{"algorithm", "RSA-3072"}});
  ASSERT_OK(created);
  const std::string key_id = (*created)["key_id"].get<std::string>();

  StopServer(SIGTERM);
  StartServer();
  auto read = Client("portal")->Get("/v1/customers/acme/keys/" + key_id);
  ASSERT_OK(read);
  EXPECT_EQ((*read)["public_key_pem"], (*created)["public_key_pem"]);
  EXPECT_EQ((*read)["certificate_pem"], (*created)["certificate_pem"]);

  // The creation is audited under the token's KEK id.
  auto audit = Client("operator")->Get("/v1/audit");
  ASSERT_OK(audit);
  EXPECT_NE(audit->dump().find("pkcs11:vmseal-kms/vmseal-kms-kek"), std::string::npos) << audit->dump();
  std::string log = testing::ReadFileOrDie(dir_ + "/serve.log");
  EXPECT_NE(log.find("kek pkcs11:vmseal-kms/vmseal-kms-kek"), std::string::npos) << log;
  EXPECT_EQ(log.find(kPin), std::string::npos);
  EXPECT_EQ(testing::ReadFileOrDie(dir_ + "/kms.json").find(kPin), std::string::npos);
}

TEST_F(KmsPkcs11ProcessTest, BothOrNeitherKekSourceIsRefused) {
  StopServer(SIGTERM);
  json config = json::parse(testing::ReadFileOrDie(dir_ + "/kms.json"));
  json both = config;
  both["kek_file"] = dir_ + "/kek";
  std::string out = ServeFails(both);
  EXPECT_NE(out.find("set exactly one of kek_file and kek_pkcs11 (both are set)"), std::string::npos) << out;
  json neither = config;
  neither.erase("kek_pkcs11");
  out = ServeFails(neither);
  EXPECT_NE(out.find("set exactly one of kek_file and kek_pkcs11 (neither is set)"), std::string::npos) << out;
  json typo = config;
  typo["kek_pkcs11"]["tokn_label"] = "x";
  out = ServeFails(typo);
  EXPECT_NE(out.find("unknown key \"kek_pkcs11.tokn_label\""), std::string::npos) << out;
}

TEST_F(KmsPkcs11ProcessTest, MissingOrWrongPinIsRefused) {
  StopServer(SIGTERM);
  json config = json::parse(testing::ReadFileOrDie(dir_ + "/kms.json"));
  ::unsetenv(kPinEnv);
  std::string out = ServeFails(config);
  EXPECT_NE(out.find(std::string("environment variable ") + kPinEnv), std::string::npos) << out;
  ::setenv(kPinEnv, "00000000", 1);
  out = ServeFails(config);
  EXPECT_NE(out.find("PIN refused"), std::string::npos) << out;
  EXPECT_EQ(out.find("00000000"), std::string::npos) << out;
  ::setenv(kPinEnv, kPin, 1);
  config["kek_pkcs11"]["key_label"] = "no-such-key";
  out = ServeFails(config);
  EXPECT_NE(out.find("no AES key labelled no-such-key"), std::string::npos) << out;
}

// rotate-kek from one key in the SoftHSM2 token to a new one it generates
// there: every key ends under the new token key and opens under it; the
// PIN never leaves the environment.
TEST_F(KmsPkcs11ProcessTest, RotateKekToANewTokenKeyRewrapsEveryKey) {
  Pkcs11KekOptions o;
  o.module_path = kModule;
  o.token_label = "vmseal-kms";
  o.pin = SecretBytes(crypto::AsBytes(std::string_view(kPin)));
  auto old_kek = OpenPkcs11Kek(o);
  ASSERT_OK(old_kek);
  {
    auto store = Store::Open(dir_ + "/kms.db");
    ASSERT_OK(store);
    ASSERT_OK(kms_testing::SeedWrappedKeys(store->get(), **old_kek, 2000, "seed"));
  }
  ASSERT_OK(Client("portal")->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
  KeyCreator creator;
  StartCreating(&creator);
  const int rc = RunCommand(RotateKekArgs({"--new-key-label", "vmseal-kms-kek-2"}), &out_);
  creator.stop = true;
  creator.thread.join();
  ASSERT_EQ(rc, 0) << out_;
  EXPECT_EQ(creator.failed.load(), 0) << creator.first_error;
  const std::string new_id = "pkcs11:vmseal-kms/vmseal-kms-kek-2";
  EXPECT_NE(out_.find("KEK rotated to " + new_id), std::string::npos) << out_;
  auto counts = KeysByKek();
  EXPECT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts[new_id], 2001 + creator.created.load());
  o.key_label = "vmseal-kms-kek-2";
  auto new_kek = OpenPkcs11Kek(o);
  ASSERT_OK(new_kek);
  {
    auto store = Store::Open(dir_ + "/kms.db");
    ASSERT_OK(store);
    auto opened = kms_testing::OpenEveryKey(store->get(), **new_kek);
    ASSERT_OK(opened);
    EXPECT_EQ(*opened, 2001 + creator.created.load());
  }
  json config = json::parse(testing::ReadFileOrDie(dir_ + "/kms.json"));
  EXPECT_EQ(config["kek_pkcs11"]["key_label"], "vmseal-kms-kek-2");
  EXPECT_FALSE(config["kek_pkcs11"].contains("previous_key_label"));
  StopServer(SIGTERM);
  StartServer();
  ASSERT_OK(Client("portal")->Post("/v1/customers/acme/keys", json{{"algorithm", "X25519"}}));
  EXPECT_EQ(testing::ReadFileOrDie(dir_ + "/serve.log").find(kPin), std::string::npos);
  EXPECT_EQ(out_.find(kPin), std::string::npos);
}

}  // namespace
}  // namespace vmseal::kms
