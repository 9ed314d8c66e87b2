// The relayed serial consoles (console_logs.h): bounds, and that the text
// survives a portal restart through the object store.
#include "csp/console_logs.h"

#include <gtest/gtest.h>

#include "store/fs_store.h"
#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using ::vmseal::testing::TempDir;

std::unique_ptr<store::FsObjectStore> OpenStore(const TempDir& dir) {
  auto s = store::FsObjectStore::Create({dir.File("objects"), nullptr});
  EXPECT_OK(s);
  return std::move(s).value();
}

TEST(ConsoleLogsTest, TextSurvivesARestartThroughTheStore) {
  TempDir dir;
  {
    auto store = OpenStore(dir);
    ConsoleLogs logs(store.get());
    ASSERT_OK(logs.Put("job-1", "booting\nMARKER-7\n", 1700000000));
  }
  auto store = OpenStore(dir);  // a new portal process on the same store
  ConsoleLogs logs(store.get());
  auto e = logs.Get("job-1");
  ASSERT_OK(e);
  EXPECT_EQ(e->text, "booting\nMARKER-7\n");
  EXPECT_EQ(e->updated_unix, 1700000000);
  EXPECT_STATUS(logs.Get("job-2").status(), StatusCode::kNotFound, "no console output");
}

TEST(ConsoleLogsTest, WithoutAStoreARestartForgets) {
  { ConsoleLogs logs; ASSERT_OK(logs.Put("job-1", "x", 1)); }
  ConsoleLogs logs;
  EXPECT_STATUS(logs.Get("job-1").status(), StatusCode::kNotFound, "no console output");
}

TEST(ConsoleLogsTest, KeepsOnlyTheTailAndTheNewestText) {
  TempDir dir;
  auto store = OpenStore(dir);
  ConsoleLogs logs(store.get());
  const std::string tail = std::string(ConsoleLogs::kMaxTextBytes - 3, 't') + "END";
  ASSERT_OK(logs.Put("job-1", std::string(1000, 'h') + tail, 5));
  ConsoleLogs reopened(store.get());
  auto e = reopened.Get("job-1");
  ASSERT_OK(e);
  EXPECT_EQ(e->text, tail);
  ASSERT_OK(reopened.Put("job-1", "newer", 6));
  ConsoleLogs third(store.get());
  EXPECT_EQ(third.Get("job-1")->text, "newer");
}

TEST(ConsoleLogsTest, EraseRemovesTheTextFromTheStoreToo) {
  TempDir dir;
  auto store = OpenStore(dir);
  ConsoleLogs logs(store.get());
  ASSERT_OK(logs.Put("job-1", "secret-ish guest output", 5));
  logs.Erase("job-1");
  EXPECT_STATUS(logs.Get("job-1").status(), StatusCode::kNotFound, "no console output");
  EXPECT_STATUS(store->Stat(ConsoleLogs::KeyFor("job-1")).status(), StatusCode::kNotFound, "");
}

TEST(ConsoleLogsTest, AMalformedStoredObjectIsAnErrorNotText) {
  TempDir dir;
  auto store = OpenStore(dir);
  store::StringReader r("no header line");
  ASSERT_OK(store->Put(ConsoleLogs::KeyFor("job-1"), r, {}).status());
  ConsoleLogs logs(store.get());
  EXPECT_STATUS(logs.Get("job-1").status(), StatusCode::kDataLoss, "malformed");
}

}  // namespace
}  // namespace vmseal::csp
