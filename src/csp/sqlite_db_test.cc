#include "csp/sqlite_db.h"

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
