#include "host/sysroot.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "host/hold_signals.h"
#include "host/host_error.h"

namespace passvm::host {
namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(Sysroot, AFileIsReplacedWholeAndNoTemporaryIsLeft) {
  char tmpl[] = "/tmp/passvm-sysroot-XXXXXX";
  const fs::path root = mkdtemp(tmpl);
  Sysroot sys(root);
  sys.write_file("/run/passvm/records/0000:03:00.0", "driver=nvme\nuser=alice\n");
  sys.write_file("/run/passvm/records/0000:03:00.0", "driver=e1000e\n");
  EXPECT_EQ(slurp(root / "run/passvm/records/0000:03:00.0"), "driver=e1000e\n");
  EXPECT_EQ(std::distance(fs::directory_iterator(root / "run/passvm/records"), fs::directory_iterator()), 1);
  fs::remove_all(root);
}

// A write the file system refuses part way (here the file size limit; a full /run does the same) is an
// error, and the record that was there stays whole: a release reads the driver to give back from it.
TEST(Sysroot, AWriteRefusedPartWayIsAnErrorAndKeepsTheOldFile) {
  char tmpl[] = "/tmp/passvm-sysroot-XXXXXX";
  const fs::path root = mkdtemp(tmpl);
  Sysroot sys(root);
  sys.write_file("/run/passvm/records/r", "driver=nvme\n");
  pid_t pid = fork();
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);
    rlimit small{16, 16};
    setrlimit(RLIMIT_FSIZE, &small);
    try {
      sys.write_file("/run/passvm/records/r", "driver=nvme\n" + std::string(100, '#'));
    } catch (const HostError& e) {
      _exit(std::string(e.what()).find("cannot write") != std::string::npos ? 0 : 2);
    }
    _exit(1);  // taken as written
  }
  int st = 0;
  waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "status " << st << " (1: the failed write was not noticed)";
  EXPECT_EQ(slurp(root / "run/passvm/records/r"), "driver=nvme\n");
  EXPECT_EQ(std::distance(fs::directory_iterator(root / "run/passvm/records"), fs::directory_iterator()), 1);
  fs::remove_all(root);
}

// A SIGTERM during a reservation waits for it: the work goes on, then it is said, then the signal ends
// the process as it would have.
TEST(HoldSignals, ASignalWaitsForTheWorkThenEndsTheProcess) {
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 2);
    {
      HoldSignals hold("reservation");
      kill(getpid(), SIGTERM);
      const char done[] = "the work went on\n";
      [[maybe_unused]] auto w = write(2, done, sizeof done - 1);
    }
    _exit(0);  // not reached: the signal ends it
  }
  close(out[1]);
  std::string said;
  char buf[256];
  for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;) said.append(buf, static_cast<size_t>(n));
  close(out[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM) << "status " << st;
  EXPECT_NE(said.find("the work went on\npassvm: interrupted: the reservation was carried through first"),
            std::string::npos) << said;
}

}  // namespace
}  // namespace passvm::host
