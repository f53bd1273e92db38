#include "devices/console_output.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "testing/stalled_pipe.h"

namespace passvm::devices {
namespace {

using namespace std::chrono_literals;
using testing::StalledPipe;

std::string file_contents(int fd) {
  std::string out;
  char buf[4096];
  ssize_t n;
  for (off_t at = 0; (n = pread(fd, buf, sizeof buf, at)) > 0; at += n) out.append(buf, static_cast<size_t>(n));
  return out;
}

int temp_file() {
  char path[] = "/tmp/passvm-console-XXXXXX";
  int fd = mkstemp(path);
  if (fd >= 0) unlink(path);
  return fd;
}

class SharedFile : public ::testing::TestWithParam<bool> {};  // started writer thread, or writes at once

TEST_P(SharedFile, AMessageAfterAHalfLineStartsOnItsOwn) {
  int fd = temp_file();
  ASSERT_GE(fd, 0);
  {
    ConsoleOutput out(fd);
    if (GetParam()) out.start();
    out.write("[    0.1] Linux version 6.1 (gcc");
    out.message("passvm: guest RAM allocated\n");
    out.write(" 12.2)\n");
    out.message("passvm: mapped\n");
    out.message("passvm: ");  // one message in two writes gets one break at most
    out.write("x");
    out.message("done\n");
    out.finish();
  }
  EXPECT_EQ(file_contents(fd),
            "[    0.1] Linux version 6.1 (gcc\npassvm: guest RAM allocated\n 12.2)\npassvm: mapped\npassvm: x\ndone\n");
  close(fd);
}

INSTANTIATE_TEST_SUITE_P(ConsoleOutput, SharedFile, ::testing::Bool());

// An output whose reader stalled, its writer thread started.
class Stalled : public ::testing::Test {
 protected:
  ConsoleOutput& started(size_t capacity) {
    EXPECT_GE(p.fds[1], 0);
    made = std::make_unique<ConsoleOutput>(p.fds[1], capacity);
    made->start();
    return *made;
  }
  StalledPipe p;
  std::unique_ptr<ConsoleOutput> made;
};

// The freeze this class exists for: with the reader stalled, write() returns at once, and takes no
// more than its room; once the reader reads again, the listener hears of room and everything taken
// arrives, in order.
TEST_F(Stalled, AWriteNeverBlocksAndRoomIsAnnounced) {
  std::atomic<int> rooms{0};
  ConsoleOutput& out = started(1000);
  auto id = out.on_room([&] { rooms++; });
  std::string sent;
  for (int i = 0; sent.size() < 1000; i++) {
    std::string line = "line " + std::to_string(i) + "\n";
    size_t n = out.write(line);
    sent += line.substr(0, n);
    if (n < line.size()) break;
  }
  EXPECT_EQ(sent.size(), 1000u);
  EXPECT_EQ(out.write("refused\n"), 0u);
  EXPECT_FALSE(out.has_room());
  EXPECT_EQ(rooms, 0);
  std::string got = p.read_until(sent.size());
  EXPECT_EQ(got, sent);
  for (int i = 0; i < 500 && rooms == 0; i++) std::this_thread::sleep_for(10ms);
  EXPECT_GE(rooms, 1);
  EXPECT_TRUE(out.has_room());
  EXPECT_EQ(out.dropped(), 0u);
  out.remove_listener(id);
  out.finish();
}

TEST_F(Stalled, MessagesGoPastGuestOutputsRoomButNotWithoutBound) {
  ConsoleOutput& out = started(100);
  EXPECT_EQ(out.write(std::string(200, 'g')), 100u);
  out.message("passvm: stopping\n");
  EXPECT_EQ(out.pending(), 100u + 1 + 17);  // a line break: the guest's output did not end its line
  std::string big(ConsoleOutput::kMessageRoom, 'm');
  out.message(big);
  EXPECT_EQ(out.dropped(), big.size());
  EXPECT_EQ(out.pending(), 118u);
  std::string got = p.read_until(118);
  EXPECT_EQ(got, std::string(100, 'g') + "\npassvm: stopping\n");
  out.finish();
}

// Whether a message needs a line break of its own depends on the guest bytes that were taken, not on
// those refused (which the guest sends again, or which are lost).
TEST_F(Stalled, AMessageFollowsTheLastLineTakenNotTheBytesRefused) {
  ConsoleOutput& out = started(10);
  EXPECT_EQ(out.write("1234567"), 7u);
  EXPECT_EQ(out.write("ab\ncd"), 3u);  // taken up to the line's end: no break needed
  out.message("m\n");
  EXPECT_EQ(out.write("x"), 0u);  // refused
  out.message("n\n");
  EXPECT_EQ(p.read_until(14), "1234567ab\nm\nn\n");
  out.finish();
}

TEST(ConsoleOutput, AMessageBreaksALineWhoseEndWasRefused) {
  StalledPipe p;
  ConsoleOutput out(p.fds[1], 10);
  out.start();
  EXPECT_EQ(out.write("12345678"), 8u);
  EXPECT_EQ(out.write("ab\n"), 2u);  // the "\n" is refused: the line taken is open
  out.message("m\n");
  EXPECT_EQ(p.read_until(13), "12345678ab\nm\n");
  out.finish();
}

// The process must end even when nobody reads: finish() drops what it could not write in its time.
TEST_F(Stalled, FinishEndsWhileTheReaderStaysSo) {
  ConsoleOutput& out = started(1000);
  out.write("never read\n");
  out.finish(100ms);
  EXPECT_EQ(out.dropped(), 11u);
  EXPECT_EQ(out.pending(), 0u);
  // After finish(), a write takes only what the file takes at once.
  EXPECT_EQ(out.write("late\n"), 5u);
  EXPECT_EQ(out.dropped(), 16u);
}

// At exit, stdout and stderr as two files whose readers both stalled: the process waits one bound
// (kFinishTimeout) for both, then half a second for stdout, not a bound for each.
TEST(StandardStreams, BothStalledShareOneBoundAtExit) {
  StalledPipe out_pipe, err_pipe;
  int ready[2];
  ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(ready[0]);
    if (dup2(out_pipe.fds[1], STDOUT_FILENO) < 0 || dup2(err_pipe.fds[1], STDERR_FILENO) < 0) _exit(90);
    route_standard_streams();
    start_standard_streams({});
    standard_output()->write("guest output nobody reads\n");
    std::fprintf(stderr, "passvm: a message nobody reads\n");
    if (::write(ready[1], "x", 1) != 1) _exit(91);
    std::exit(0);  // runs the streams' finish at exit
  }
  close(ready[1]);
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  const auto exiting = std::chrono::steady_clock::now();
  int status = 0;
  pid_t done = 0;
  // Bounded, so that a child that never ends fails the test rather than hanging it.
  while ((done = waitpid(child, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() - exiting < 20s)
    std::this_thread::sleep_for(10ms);
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - exiting);
  if (done == 0) {
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
  }
  close(ready[0]);
  ASSERT_EQ(done, child) << "the process did not end within 20 s";
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const auto bound = ConsoleOutput::kFinishTimeout;
  EXPECT_GE(took, bound - 100ms) << "queued output was dropped without waiting for the reader";
  EXPECT_LT(took, bound + 1300ms) << "each stream waited a bound of its own";
}

// std::terminate's message goes out before the abort: queued output first, then the message, at once.
TEST(ConsoleOutput, WritingDirectlyWritesTheQueueAndThenEverythingAtOnce) {
  int fd = temp_file();
  ASSERT_GE(fd, 0);
  {
    ConsoleOutput out(fd);
    out.start();
    out.write("guest line\n");
    out.message("passvm: one\n");
    out.write_directly();
    out.message("terminate called after throwing\n");
    EXPECT_EQ(file_contents(fd), "guest line\npassvm: one\nterminate called after throwing\n");
    EXPECT_EQ(out.pending(), 0u);
  }
  close(fd);
}

TEST(ConsoleOutput, AReaderThatWentAwayDropsTheOutputAndFreesRoom) {
  signal(SIGPIPE, SIG_IGN);  // as passvm runs
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  close(fds[0]);
  ConsoleOutput out(fds[1], 10);
  std::atomic<int> rooms{0};
  auto id = out.on_room([&] { rooms++; });
  out.start();
  EXPECT_EQ(out.write("0123456789abc"), 10u);
  for (int i = 0; i < 500 && (out.pending() > 0 || rooms == 0); i++) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(out.pending(), 0u);
  EXPECT_EQ(out.dropped(), 10u);
  EXPECT_GE(rooms, 1);
  out.remove_listener(id);
  out.finish();
  close(fds[1]);
}

// A listener removed is not called again, even while the writer is about to call it.
TEST_F(Stalled, ARemovedListenerIsNotCalled) {
  std::atomic<int> removed_calls{0}, kept_calls{0};
  ConsoleOutput& out = started(10);
  auto removed = out.on_room([&] { removed_calls++; });
  out.on_room([&] { kept_calls++; });
  EXPECT_EQ(out.write("0123456789abc"), 10u);
  out.remove_listener(removed);
  p.read_until(10);
  for (int i = 0; i < 500 && kept_calls == 0; i++) std::this_thread::sleep_for(10ms);
  EXPECT_GE(kept_calls, 1);
  EXPECT_EQ(removed_calls, 0);
  out.finish();
}

// A listener that throws (a device whose ring went bad) is said, and neither ends the process nor keeps
// the others from hearing.
TEST_F(Stalled, AListenerThatThrowsIsSaidAndTheOthersStillHear) {
  std::atomic<int> kept_calls{0};
  ConsoleOutput& out = started(10);
  out.on_room([] { throw std::runtime_error("the ring is broken"); });
  out.on_room([&] { kept_calls++; });
  EXPECT_EQ(out.write("0123456789abc"), 10u);
  ::testing::internal::CaptureStderr();
  p.read_until(10);
  for (int i = 0; i < 500 && kept_calls == 0; i++) std::this_thread::sleep_for(10ms);
  const std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_GE(kept_calls, 1);
  EXPECT_NE(said.find("the ring is broken"), std::string::npos) << said;
  out.finish();
}

}  // namespace
}  // namespace passvm::devices
