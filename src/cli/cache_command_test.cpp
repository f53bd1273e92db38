#include "cli/cache_command.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace passvm::cli {
namespace {

namespace fs = std::filesystem;

int run(const std::vector<std::string>& args) {
  std::string name = "passvm cache";
  std::vector<std::string> copy = args;
  std::vector<char*> argv{name.data()};
  for (auto& a : copy) argv.push_back(a.data());
  return cache_main(static_cast<int>(argv.size()), argv.data());
}

struct CacheCommand : ::testing::Test {
  fs::path dir;
  void SetUp() override {
    char tmpl[] = "/tmp/passvm-cache-cmd-XXXXXX";
    dir = mkdtemp(tmpl);
    setenv("PASSVM_CACHE_DIR", dir.c_str(), 1);
  }
  void TearDown() override {
    unsetenv("PASSVM_CACHE_DIR");
    fs::remove_all(dir);
  }
  void touch(const std::string& name) { std::ofstream(dir / name) << "x"; }
};

TEST_F(CacheCommand, UsageErrorsExitWith2) {
  EXPECT_EQ(run({}), 2) << "no subcommand";
  EXPECT_EQ(run({"remove"}), 2) << "neither KERNEL nor --all";
  EXPECT_EQ(run({"remove", "--all", "/boot/vmlinuz"}), 2) << "both";
  EXPECT_EQ(run({"add"}), 2) << "add without KERNEL";
  EXPECT_EQ(run({"frobnicate"}), 2);
}

TEST_F(CacheCommand, RemoveAllTakesEntriesAndTheFileIndexOnly) {
  touch("kernel-0123456789abcdef-42.unpacked");
  touch("id-803-1f2c");
  touch("kernel-0123456789abcdef-42.unpacked.77.tmp");  // another passvm's recording in progress
  touch("notes.txt");
  EXPECT_EQ(run({"remove", "--all"}), 0);
  EXPECT_FALSE(fs::exists(dir / "kernel-0123456789abcdef-42.unpacked"));
  EXPECT_FALSE(fs::exists(dir / "id-803-1f2c"));
  EXPECT_TRUE(fs::exists(dir / "kernel-0123456789abcdef-42.unpacked.77.tmp"));
  EXPECT_TRUE(fs::exists(dir / "notes.txt"));
}

TEST_F(CacheCommand, AddOfAFileThatIsNoKernelFailsWith1) {
  touch("not-a-kernel");
  EXPECT_EQ(run({"add", (dir / "not-a-kernel").string()}), 1);
  EXPECT_EQ(run({"add", (dir / "missing").string()}), 1);
}

}  // namespace
}  // namespace passvm::cli
