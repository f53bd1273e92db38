#include "confine/privileges.h"

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

namespace passvm::confine {
namespace {

constexpr int CAP_SYS_RESOURCE_BIT = 24;  // linux/capability.h's CAP_SYS_RESOURCE

TEST(ResolveUser, Root) {
  UserIds root = resolve_user("root");
  EXPECT_EQ(root.uid, 0u);
  EXPECT_EQ(root.gid, 0u);
  EXPECT_EQ(root.name, "root");
  EXPECT_NE(std::find(root.groups.begin(), root.groups.end(), 0u), root.groups.end());
}

TEST(ResolveUser, NobodyIsNotRootAndHasItsLoginGroup) {
  UserIds nobody = resolve_user("nobody");
  EXPECT_NE(nobody.uid, 0u);
  EXPECT_EQ(nobody.name, "nobody");
  EXPECT_NE(std::find(nobody.groups.begin(), nobody.groups.end(), nobody.gid), nobody.groups.end());
}

TEST(ResolveUser, UnknownNameIsNamed) {
  try {
    resolve_user("passvm-no-such-user");
    FAIL() << "no error";
  } catch (const ConfineError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown user 'passvm-no-such-user'"), std::string::npos) << e.what();
  }
}

TEST(DropTo, RefusesRoot) { EXPECT_THROW(drop_to(resolve_user("root"), 0), ConfineError); }

std::string slurp(const char* path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs in a forked child: the test process itself must stay root.
int drop_and_look_around(const UserIds& user, uint64_t memlock) {
  // Start below what is asked, so the soft limit has to be raised.
  rlimit low{};
  getrlimit(RLIMIT_MEMLOCK, &low);
  low.rlim_cur = memlock / 2;
  setrlimit(RLIMIT_MEMLOCK, &low);
  try {
    drop_to(user, memlock);
  } catch (const ConfineError& e) {
    std::fprintf(stderr, "drop_to: %s\n", e.what());
    return 1;
  }
  rlimit limit{};
  getrlimit(RLIMIT_MEMLOCK, &limit);
  if (limit.rlim_cur < memlock || limit.rlim_max < memlock) {
    std::fprintf(stderr, "memlock %llu/%llu\n", static_cast<unsigned long long>(limit.rlim_cur),
                 static_cast<unsigned long long>(limit.rlim_max));
    return 2;
  }
  if (getuid() != user.uid || geteuid() != user.uid || getgid() != user.gid) return 3;
  if (setgid(0) == 0) return 4;
  // What the VMM reads of itself after the drop, non-dumpable as it now is.
  if (slurp("/proc/self/smaps").empty() || slurp("/proc/self/status").find("CapEff") == std::string::npos) return 5;
  // A second drop is refused: no longer root.
  try {
    drop_to(user, memlock);
    return 6;
  } catch (const ConfineError&) {
  }
  return 0;
}

// Containers often withhold CAP_SYS_RESOURCE from root, and with it raising a hard limit.
bool can_raise_hard_limits() {
  std::string status = slurp("/proc/self/status");
  auto at = status.find("CapEff:");
  return at != std::string::npos && (std::stoull(status.substr(at + 7), nullptr, 16) >> CAP_SYS_RESOURCE_BIT) & 1;
}

TEST(DropTo, BecomesTheUserForGoodInAChild) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root";
  UserIds nobody = resolve_user("nobody");
  rlimit limit{};
  getrlimit(RLIMIT_MEMLOCK, &limit);
  bool raise_hard = can_raise_hard_limits() || limit.rlim_max == RLIM_INFINITY;
  uint64_t wanted = raise_hard ? 1ull << 30 : limit.rlim_max;
  EXPECT_EXIT(std::_Exit(drop_and_look_around(nobody, wanted)), ::testing::ExitedWithCode(0), "");
}

TEST(DropTo, MemlockBeyondTheHardLimitNeedsCapSysResource) {
  if (geteuid() != 0 || can_raise_hard_limits()) GTEST_SKIP() << "needs root without CAP_SYS_RESOURCE";
  try {
    drop_to(resolve_user("nobody"), RLIM_INFINITY - 1);
    FAIL() << "no error";
  } catch (const ConfineError& e) {
    EXPECT_NE(std::string(e.what()).find("CAP_SYS_RESOURCE"), std::string::npos) << e.what();
  }
  EXPECT_EQ(geteuid(), 0u);  // refused before any id changed
}

TEST(DropTo, NeedsRoot) {
  if (geteuid() == 0) GTEST_SKIP() << "covered in BecomesTheUserForGoodInAChild";
  EXPECT_THROW(drop_to(resolve_user("nobody"), 0), ConfineError);
}

TEST(UnopenableAs, TriesEachPathAsTheUser) {
  if (geteuid() != 0) GTEST_SKIP() << "becoming another user needs root";
  const std::string root_only = "/tmp/passvm-unopenable-" + std::to_string(getpid());
  std::ofstream(root_only) << "x";
  ASSERT_EQ(chmod(root_only.c_str(), 0600), 0);
  const UserIds nobody = resolve_user("nobody");
  auto cannot = unopenable_as(nobody, {root_only, "/dev/null", "/nonexistent/passvm"});
  ASSERT_EQ(cannot.size(), 2u);
  EXPECT_EQ(cannot[0], (std::pair<std::string, int>{root_only, EACCES}));
  EXPECT_EQ(cannot[1], (std::pair<std::string, int>{"/nonexistent/passvm", ENOENT}));
  // What the mode bits alone would refuse, a grant lets through: here, the file becomes nobody's.
  ASSERT_EQ(chown(root_only.c_str(), nobody.uid, nobody.gid), 0);
  EXPECT_TRUE(unopenable_as(nobody, {root_only}).empty());
  EXPECT_EQ(getuid(), 0u) << "only the child became the user";
  std::remove(root_only.c_str());
}

TEST(MemlockForGuest, CoversGuestRamAndAMargin) { EXPECT_GT(memlock_for_guest(512ull << 20), 512ull << 20); }

}  // namespace
}  // namespace passvm::confine
