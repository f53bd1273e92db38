// eprint against a stderr that cannot be written: the message is lost, the caller goes on.
#include "base/eprint.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <system_error>

#include <gtest/gtest.h>

namespace passvm {
namespace {

// stderr, for the test's length, as the write end of a pipe whose reader is gone.
class BrokenStderr : public ::testing::Test {
 protected:
  void SetUp() override {
    old_pipe_ = signal(SIGPIPE, SIG_IGN);  // as passvm runs: a failed write is EPIPE, not a signal
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    close(fds[0]);
    broken_ = fdopen(fds[1], "w");
    ASSERT_NE(broken_, nullptr);
    setvbuf(broken_, nullptr, _IONBF, 0);
    saved_ = stderr;
    stderr = broken_;
  }
  void TearDown() override {
    stderr = saved_;
    if (broken_) fclose(broken_);
    signal(SIGPIPE, old_pipe_);
  }
  FILE* saved_ = nullptr;
  FILE* broken_ = nullptr;
  sighandler_t old_pipe_ = SIG_DFL;
};

TEST_F(BrokenStderr, FmtPrintThrowsThere) {
  // Why eprint exists: the library's own print does not survive this stderr.
  EXPECT_THROW(fmt::print(stderr, "passvm: {}\n", "lost"), std::system_error);
}

TEST_F(BrokenStderr, EprintLosesTheMessageOnly) {
  EXPECT_NO_THROW(eprint("passvm: {}: {}\n", "vm", std::string(100000, 'x')));
  EXPECT_NO_THROW(eprint("passvm: no arguments\n"));
}

TEST(Eprint, WritesTheFormattedText) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  FILE* saved = stderr;
  stderr = fdopen(fds[1], "w");
  ASSERT_NE(stderr, nullptr);
  eprint("passvm: {} of {}\n", 3, "four");
  fclose(stderr);
  stderr = saved;
  char buf[64] = {};
  ssize_t n = read(fds[0], buf, sizeof buf - 1);
  close(fds[0]);
  EXPECT_EQ(std::string(buf, n > 0 ? n : 0), "passvm: 3 of four\n");
}

}  // namespace
}  // namespace passvm
