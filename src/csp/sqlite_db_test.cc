#include "csp/sqlite_db.h"

#include <sqlite3.h>
#include <sys/stat.h>

#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using ::vmseal::testing::TempDir;

ImageRecord Image(const std::string& id, const std::string& customer, int64_t t) {
  return ImageRecord{id, customer, "name-" + id, "images/" + customer + "/" + id, 10,
                     std::string(64, 'a'), "{}", t};
}

TEST(SqlitePortalDbTest, DuplicateLoginIsAlreadyExists) {
  auto db = SqlitePortalDb::Open(":memory:");
  ASSERT_OK(db);
  ASSERT_OK((*db)->InsertCustomer({"c1", "u-1", "h", 1}));
  EXPECT_STATUS((*db)->InsertCustomer({"c2", "u-1", "h", 1}), StatusCode::kAlreadyExists,
                "customer already exists");
}

TEST(SqlitePortalDbTest, CustomerKeyRoundTripsById) {
  auto db = SqlitePortalDb::Open(":memory:");
  ASSERT_OK(db);
  CustomerRecord c{"c1", "u-1", "h", 1, "key-1", "RSA-3072", "PUB", "CERT"};
  ASSERT_OK((*db)->InsertCustomer(c));
  auto got = (*db)->FindCustomerById("c1");
  ASSERT_OK(got);
  EXPECT_EQ(got->key_id, "key-1");
  EXPECT_EQ(got->key_algorithm, "RSA-3072");
  EXPECT_EQ(got->public_key_pem, "PUB");
  EXPECT_EQ(got->cert_pem, "CERT");
  EXPECT_STATUS((*db)->FindCustomerById("c2"), StatusCode::kNotFound, "no such customer");
}

TEST(SqlitePortalDbTest, DatabaseFromBeforeCustomerKeysIsUpgraded) {
  TempDir dir;
  const std::string path = dir.File("portal.db");
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(raw,
                         "CREATE TABLE customers (customer_id TEXT PRIMARY KEY, login_id TEXT NOT "
                         "NULL UNIQUE, password_hash TEXT NOT NULL, created_unix INTEGER NOT NULL);"
                         "INSERT INTO customers VALUES('c0','u-0','h',1);",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(raw);
  auto db = SqlitePortalDb::Open(path);
  ASSERT_OK(db);
  auto old = (*db)->FindCustomerByLogin("u-0");
  ASSERT_OK(old);
  EXPECT_EQ(old->key_id, "");
  ASSERT_OK((*db)->InsertCustomer({"c1", "u-1", "h", 1, "key-1", "RSA-3072", "PUB", "CERT"}));
  db->reset();
  auto reopened = SqlitePortalDb::Open(path);  // the upgrade is idempotent
  ASSERT_OK(reopened);
  EXPECT_EQ((*reopened)->FindCustomerById("c1")->key_id, "key-1");
}

TEST(SqlitePortalDbTest, ImageLookupIsScopedToItsCustomer) {
  auto db = SqlitePortalDb::Open(":memory:");
  ASSERT_OK(db);
  ASSERT_OK((*db)->InsertCustomer({"ca", "u-a", "h", 1}));
  ASSERT_OK((*db)->InsertCustomer({"cb", "u-b", "h", 1}));
  ASSERT_OK((*db)->InsertImage(Image("img1", "ca", 5)));
  EXPECT_OK((*db)->FindImage("ca", "img1"));
  EXPECT_STATUS((*db)->FindImage("cb", "img1"), StatusCode::kNotFound, "no such image");
  EXPECT_STATUS((*db)->DeleteImage("cb", "img1"), StatusCode::kNotFound, "no such image");
  auto list = (*db)->ListImages("cb");
  ASSERT_OK(list);
  EXPECT_TRUE(list->empty());
  EXPECT_OK((*db)->FindImage("ca", "img1"));
}

TEST(SqlitePortalDbTest, ExpiredSessionsAreDeleted) {
  auto db = SqlitePortalDb::Open(":memory:");
  ASSERT_OK(db);
  ASSERT_OK((*db)->InsertCustomer({"c1", "u-1", "h", 1}));
  ASSERT_OK((*db)->InsertSession({"t1", "c1", 100}));
  ASSERT_OK((*db)->InsertSession({"t2", "c1", 200}));
  auto n = (*db)->DeleteExpiredSessions(150);
  ASSERT_OK(n);
  EXPECT_EQ(*n, 1);
  EXPECT_STATUS((*db)->FindSession("t1"), StatusCode::kNotFound, "no such session");
  EXPECT_OK((*db)->FindSession("t2"));
}

TEST(SqlitePortalDbTest, DataPersistsInAPrivateFile) {
  TempDir dir;
  {
    auto db = SqlitePortalDb::Open(dir.File("portal.db"));
    ASSERT_OK(db);
    ASSERT_OK((*db)->InsertCustomer({"c1", "u-1", "h", 1}));
    ASSERT_OK((*db)->InsertImage(Image("i1", "c1", 1)));
    ASSERT_OK((*db)->InsertImage(Image("i0", "c1", 2)));
  }
  struct stat st;
  ASSERT_EQ(::stat(dir.File("portal.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto db = SqlitePortalDb::Open(dir.File("portal.db"));
  ASSERT_OK(db);
  auto list = (*db)->ListImages("c1");
  ASSERT_OK(list);
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].image_id, "i1");  // oldest first
}

TEST(SqlitePortalDbTest, UnopenablePathIsUnavailable) {
  EXPECT_STATUS(SqlitePortalDb::Open("/nonexistent-dir/x/portal.db"), StatusCode::kUnavailable,
                "open database");
}

}  // namespace
}  // namespace vmseal::csp
