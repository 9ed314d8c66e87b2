// KEK ring and rotation against a real SQLite store: every key and service
// secret ends under the new KEK and opens, each exactly by the KEK it
// names; unwraps running beside the rotation never fail; a stale
// compare-and-set changes nothing; the old KEK is retired only when no
// record names it.
#include "kms/kek_rotation.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "crypto/primitives.h"
#include "kms/audit.h"
#include "kms/testing/seed_keys.h"
#include "testing/test_util.h"

namespace vmseal::kms {
namespace {

using nlohmann::json;
using ::vmseal::testing::TempDir;

std::unique_ptr<KeyEncryptionKey> NewKek() {
  auto kek = KekFromBytes(SecretBytes::Random(kKekBytes));
  EXPECT_OK(kek);
  return *std::move(kek);
}

SecretBytes Secret(std::string_view s) { return SecretBytes(crypto::AsBytes(s)); }

TEST(KekRingTest, OpensEachRecordByTheKekItNamesAndWrapsUnderTheCurrentOne) {
  auto a = NewKek();
  auto b = NewKek();
  const std::string a_id = a->id(), b_id = b->id();
  auto under_a = a->Wrap(Secret("one"), "aad");
  ASSERT_OK(under_a);
  KekRing ring(std::move(a));
  EXPECT_EQ(ring.id(), a_id);
  EXPECT_FALSE(ring.Holds(b_id));
  EXPECT_STATUS(ring.UnwrapUnder(b_id, *under_a, "aad"), StatusCode::kFailedPrecondition, "kek_mismatch: ");
  ring.Install(std::move(b));
  EXPECT_EQ(ring.id(), b_id);
  EXPECT_TRUE(ring.Holds(a_id));
  EXPECT_EQ(ring.ids(), (std::vector<std::string>{b_id, a_id}));
  auto opened = ring.UnwrapUnder(a_id, *under_a, "aad");
  ASSERT_OK(opened);
  EXPECT_TRUE(opened->Equals(Secret("one")));
  // The record names A: B does not open it (no silent fallback).
  EXPECT_STATUS(ring.UnwrapUnder(b_id, *under_a, "aad"), StatusCode::kUnauthenticated, "");
  // New wraps are under B.
  auto fresh = ring.Wrap(Secret("two"), "aad");
  ASSERT_OK(fresh);
  EXPECT_OK(ring.UnwrapUnder(b_id, *fresh, "aad"));
  EXPECT_STATUS(ring.UnwrapUnder(a_id, *fresh, "aad"), StatusCode::kUnauthenticated, "");
  // The current KEK cannot be dropped; the previous one can, and then opens nothing.
  EXPECT_STATUS(ring.Drop(b_id), StatusCode::kFailedPrecondition, "kek_current");
  ASSERT_OK(ring.Drop(a_id));
  EXPECT_FALSE(ring.Holds(a_id));
  EXPECT_STATUS(ring.UnwrapUnder(a_id, *under_a, "aad"), StatusCode::kFailedPrecondition, "kek_mismatch: ");
  EXPECT_EQ(ring.ids(), (std::vector<std::string>{b_id}));
}

// A record being stored under the current KEK holds the ring's write gate:
// a reload (Install) waits for it, so a re-wrap that starts after the
// reload cannot miss it (the race a KMS replica lost under CI load: a key
// wrapped under the old KEK and stored after the re-wrap had passed).
TEST(KekRingTest, AReloadWaitsForARecordBeingStoredUnderTheKekItReplaces) {
  auto a = NewKek();
  auto b = NewKek();
  const std::string a_id = a->id(), b_id = b->id();
  KekRing ring(std::move(a));
  auto sealed = ring.WrapForRecord(Secret("one"), "aad");
  ASSERT_OK(sealed);
  EXPECT_EQ(sealed->kek_id, a_id);
  std::atomic<bool> installed{false};
  std::thread reload([&] {
    ring.Install(std::move(b));
    installed = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(installed.load()) << "Install did not wait for the record being stored";
  EXPECT_EQ(ring.id(), a_id);
  sealed->hold.reset();  // the record is stored
  reload.join();
  EXPECT_TRUE(installed.load());
  // The record names the KEK that wrapped it, and later ones the new KEK.
  EXPECT_OK(ring.UnwrapUnder(sealed->kek_id, sealed->wrapped, "aad"));
  auto next = ring.WrapForRecord(Secret("two"), "aad");
  ASSERT_OK(next);
  EXPECT_EQ(next->kek_id, b_id);
  EXPECT_OK(ring.UnwrapUnder(b_id, next->wrapped, "aad"));
  EXPECT_STATUS(ring.UnwrapUnder(a_id, next->wrapped, "aad"), StatusCode::kUnauthenticated, "");
}

class KekRotationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(dir_.File("kms.db"));
    ASSERT_OK(store);
    store_ = *std::move(store);
    auto a = NewKek();
    a_id_ = a->id();
    ring_ = std::make_unique<KekRing>(std::move(a));
    // The service secrets, created under A as a serving KMS creates them.
    auto log = AuditLog::Open(store_.get(), ring_.get());
    ASSERT_OK(log);
    log_key_ = (*log)->verifier_key();
    auto b = NewKek();
    b_id_ = b->id();
    b_bytes_ = std::move(b);
  }

  // A loader as kms.json would give after `rotate-kek` wrote it: B current.
  KekRotation::Loader LoaderOf(std::vector<const KeyEncryptionKey*> keks) {
    return [keks]() -> StatusOr<std::vector<std::unique_ptr<KeyEncryptionKey>>> {
      std::vector<std::unique_ptr<KeyEncryptionKey>> out;
      for (const auto* k : keks) out.push_back(std::make_unique<Borrowed>(k));
      return out;
    };
  }

  // A KEK owned elsewhere (the test), handed to the ring.
  class Borrowed : public KeyEncryptionKey {
   public:
    explicit Borrowed(const KeyEncryptionKey* k) : k_(k) {}
    const std::string& id() const override { return k_->id(); }
    StatusOr<std::string> Wrap(const SecretBytes& p, std::string_view aad) const override { return k_->Wrap(p, aad); }
    StatusOr<SecretBytes> Unwrap(std::string_view w, std::string_view aad) const override {
      return k_->Unwrap(w, aad);
    }

   private:
    const KeyEncryptionKey* k_;
  };

  int64_t KeysUnder(const std::string& id) {
    auto counts = store_->CountKeysByKek();
    EXPECT_OK(counts);
    for (const auto& [k, n] : *counts) {
      if (k == id) return n;
    }
    return 0;
  }

  std::string AuditText() {
    auto recs = store_->ReadAudit(0, 100000);
    EXPECT_OK(recs);
    std::string all;
    for (const auto& r : *recs) all += r.record + "\n";
    return all;
  }

  TempDir dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<KekRing> ring_;
  std::unique_ptr<KeyEncryptionKey> b_bytes_;
  std::string a_id_, b_id_, log_key_;
};

TEST_F(KekRotationTest, RewrapsEveryKeyAndSecretWhileUnwrapsKeepSucceedingThenRetiresTheOldKek) {
  constexpr int kKeys = 1000;
  ASSERT_OK(kms_testing::SeedWrappedKeys(store_.get(), *ring_, kKeys, "k"));
  KekRotation rotation(store_.get(), ring_.get(), LoaderOf({b_bytes_.get()}), {.batch = 100});
  // Reload refuses a kms.json whose current KEK is not the operator's new one.
  EXPECT_STATUS(rotation.Reload("file:other"), StatusCode::kFailedPrecondition, "kek_unexpected");
  EXPECT_EQ(ring_->id(), a_id_);
  EXPECT_STATUS(rotation.Start(b_id_, "operator/t"), StatusCode::kFailedPrecondition, "kek_not_current");
  ASSERT_OK(rotation.Reload(b_id_));
  EXPECT_EQ(ring_->id(), b_id_);
  EXPECT_STATUS(rotation.Retire(a_id_, "operator/t"), StatusCode::kFailedPrecondition, "kek_in_use: 1000 customer keys and 1 service secrets");

  // Readers open keys, as releases do, all through the rotation.
  std::atomic<bool> done{false};
  std::atomic<int64_t> opened{0}, failed{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&, t] {
      int i = t;
      while (!done) {
        char id[32];
        std::snprintf(id, sizeof(id), "k-%06d", i % kKeys);
        i += 7;
        auto rec = store_->GetCustomerKey(id);
        if (!rec.ok()) {
          ++failed;
          continue;
        }
        auto blob = crypto::Base64Decode(rec->wrapped_private_key);
        auto der = ring_->UnwrapUnder(rec->kek_id, crypto::AsStringView(*blob),
                                      CustomerKeyAad(rec->key_id, rec->customer_id));
        if (der.ok()) {
          ++opened;
        } else {
          ++failed;
        }
      }
    });
  }
  auto started = rotation.Start(b_id_, "operator/t");
  ASSERT_OK(started);
  for (int i = 0; i < 600; ++i) {
    auto d = rotation.Describe();
    ASSERT_OK(d);
    if ((*d)["rotation"]["state"] != "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  done = true;
  for (auto& t : readers) t.join();
  auto d = rotation.Describe();
  ASSERT_OK(d);
  EXPECT_EQ((*d)["rotation"]["state"], "done") << d->dump();
  EXPECT_EQ((*d)["rotation"]["keys_rewrapped"], kKeys);
  EXPECT_EQ((*d)["rotation"]["secrets_rewrapped"], 1);  // the audit log key (no nonce key without a KmsService)
  EXPECT_EQ(failed.load(), 0);
  EXPECT_GT(opened.load(), 0);
  EXPECT_EQ(KeysUnder(b_id_), kKeys);
  EXPECT_EQ(KeysUnder(a_id_), 0);

  // Every key opens under B alone; A opens none of them.
  auto b_only = KekRing(std::make_unique<Borrowed>(b_bytes_.get()));
  auto all = kms_testing::OpenEveryKey(store_.get(), b_only);
  ASSERT_OK(all);
  EXPECT_EQ(*all, kKeys);
  auto k0 = store_->GetCustomerKey("k-000000");
  ASSERT_OK(k0);
  auto blob = crypto::Base64Decode(k0->wrapped_private_key);
  ASSERT_OK(blob);
  // A still held (until retired) but not what the record names: refused by name.
  EXPECT_STATUS(ring_->UnwrapUnder(a_id_, crypto::AsStringView(*blob), CustomerKeyAad("k-000000", "k-c000000")),
                StatusCode::kUnauthenticated, "");

  // The audit log key opens under B only, and is the same key.
  auto log = AuditLog::Open(store_.get(), &b_only);
  ASSERT_OK(log);
  EXPECT_EQ((*log)->verifier_key(), log_key_);

  ASSERT_OK(rotation.Retire(a_id_, "operator/t"));
  EXPECT_FALSE(ring_->Holds(a_id_));
  EXPECT_STATUS(ring_->UnwrapUnder(a_id_, crypto::AsStringView(*blob), CustomerKeyAad("k-000000", "k-c000000")),
                StatusCode::kFailedPrecondition, "kek_mismatch");
  EXPECT_STATUS(rotation.Retire(b_id_, "operator/t"), StatusCode::kFailedPrecondition, "kek_current");
  const std::string audit = AuditText();
  for (const char* e : {"kms.kek_rotation.start", "kms.kek_rotation.batch", "kms.kek_rotation.secret",
                        "kms.kek_rotation.done", "kms.kek_rotation.retire"}) {
    EXPECT_NE(audit.find(e), std::string::npos) << e;
  }
  EXPECT_OK(VerifyStoreAudit(*store_));
}

TEST_F(KekRotationTest, AStaleCompareAndSetChangesNothingAndARerunResumes) {
  ASSERT_OK(kms_testing::SeedWrappedKeys(store_.get(), *ring_, 10, "k"));
  auto rec = store_->GetCustomerKey("k-000003");
  ASSERT_OK(rec);
  // A re-wrap computed from an older blob than the row holds now.
  ASSERT_OK(store_->ExecForTesting("UPDATE customer_keys SET wrapped_private_key = 'AAAA' WHERE key_id = 'k-000003'"));
  auto n = store_->RewrapCustomerKeys({{"k-000003", rec->wrapped_private_key, "BBBB", b_id_}},
                                      {"kms.kek_rotation.batch", "kms", json::object()});
  ASSERT_OK(n);
  EXPECT_EQ(*n, 0);
  auto after = store_->GetCustomerKey("k-000003");
  ASSERT_OK(after);
  EXPECT_EQ(after->wrapped_private_key, "AAAA");
  EXPECT_EQ(after->kek_id, a_id_);
  // That key no longer opens: the rotation stops there, naming it, and
  // changes no other row after the failing batch.
  KekRotation rotation(store_.get(), ring_.get(), LoaderOf({b_bytes_.get()}), {.batch = 2});
  ASSERT_OK(rotation.Reload(b_id_));
  EXPECT_STATUS(rotation.RunNow("operator/t"), StatusCode::kInvalidArgument, "key k-000003");
  EXPECT_EQ(KeysUnder(b_id_), 2);  // the batch before it
  // Restored (say, from a backup): a second run resumes and finishes.
  ASSERT_OK(store_->ExecForTesting("UPDATE customer_keys SET wrapped_private_key = '" + rec->wrapped_private_key +
                                   "' WHERE key_id = 'k-000003'"));
  ASSERT_OK(rotation.RunNow("operator/t"));
  EXPECT_EQ(KeysUnder(b_id_), 10);
  auto all = kms_testing::OpenEveryKey(store_.get(), *ring_);
  ASSERT_OK(all);
  EXPECT_EQ(*all, 10);
}

}  // namespace
}  // namespace vmseal::kms
