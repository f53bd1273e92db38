#include "devices/console_sink.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include <gtest/gtest.h>

namespace passvm::devices {
namespace {

// A file both "stdout" and "stderr" of the test write to, through two descriptors as a shell's 2>&1 gives.
class SharedFile : public ::testing::Test {
 protected:
  void SetUp() override {
    char path[] = "/tmp/passvm-console-XXXXXX";
    guest_fd = mkstemp(path);
    ASSERT_GE(guest_fd, 0);
    unlink(path);
    message_fd = dup(guest_fd);
    ASSERT_GE(message_fd, 0);
  }
  void TearDown() override {
    close(guest_fd);
    close(message_fd);
  }
  std::string contents() const {
    std::string out;
    char buf[256];
    ssize_t n;
    for (off_t at = 0; (n = pread(guest_fd, buf, sizeof buf, at)) > 0; at += n) out.append(buf, static_cast<size_t>(n));
    return out;
  }
  int guest_fd = -1, message_fd = -1;
};

TEST_F(SharedFile, AMessageAfterAHalfLineStartsOnItsOwn) {
  FILE* messages = messages_on_their_own_lines(guest_fd, message_fd);
  ASSERT_NE(messages, nullptr);
  write_guest_output(guest_fd, "[    0.1] Linux version 6.1 (gcc");
  fprintf(messages, "passvm: guest RAM allocated\n");
  write_guest_output(guest_fd, " 12.2)\n");
  fprintf(messages, "passvm: mapped\n");
  fputs("passvm: ", messages);  // one message in two writes gets one break at most
  write_guest_output(guest_fd, "x");
  fputs("done\n", messages);
  EXPECT_EQ(contents(),
            "[    0.1] Linux version 6.1 (gcc\npassvm: guest RAM allocated\n 12.2)\npassvm: mapped\npassvm: x\ndone\n");
  fclose(messages);
}

TEST_F(SharedFile, OutputToAnotherDescriptorIsNotWatched) {
  FILE* messages = messages_on_their_own_lines(guest_fd, message_fd);
  ASSERT_NE(messages, nullptr);
  write_guest_output(message_fd, "half");  // not the watched guest output
  fprintf(messages, "m\n");
  EXPECT_EQ(contents(), "halfm\n");
  fclose(messages);
}

// A vCPU writing the guest's output to a pipe nobody reads is blocked in write(); the kick that asks it
// to stop or pause (a signal without SA_RESTART) must end that write, not have it tried again for ever.
TEST(GuestOutput, AnInterruptedWriteToAStalledPipeEnds) {
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  fcntl(p[1], F_SETFL, O_NONBLOCK);
  std::string block(65536, 'x');
  while (write(p[1], block.data(), block.size()) > 0) {
  }
  fcntl(p[1], F_SETFL, 0);  // full, and blocking again, as a terminal or pipe the guest prints to
  struct sigaction sa {}, old {};
  sa.sa_handler = [](int) {};
  sa.sa_flags = 0;  // as the vCPUs' kick: no SA_RESTART
  ASSERT_EQ(sigaction(SIGRTMIN + 1, &sa, &old), 0);
  std::atomic<bool> done{false};
  std::thread writer([&] {
    write_guest_output(p[1], "more guest output\n");
    done = true;
  });
  for (int i = 0; i < 50 && !done; i++) {  // until the signal finds it in write()
    pthread_kill(writer.native_handle(), SIGRTMIN + 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  bool ended = done;
  fcntl(p[0], F_SETFL, O_NONBLOCK);
  while (!done) {  // a write still blocked ends once the pipe has room
    char buf[65536];
    if (read(p[0], buf, sizeof buf) <= 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  writer.join();
  EXPECT_TRUE(ended) << "the write was tried again after the kick, and blocked";
  close(p[0]);
  close(p[1]);
  sigaction(SIGRTMIN + 1, &old, nullptr);
}

TEST(MessagesOnTheirOwnLines, DifferentFilesGetNoStream) {
  char a[] = "/tmp/passvm-console-XXXXXX", b[] = "/tmp/passvm-console-XXXXXX";
  int fa = mkstemp(a), fb = mkstemp(b);
  ASSERT_GE(fa, 0);
  ASSERT_GE(fb, 0);
  unlink(a);
  unlink(b);
  EXPECT_EQ(messages_on_their_own_lines(fa, fb), nullptr);
  close(fa);
  close(fb);
}

}  // namespace
}  // namespace passvm::devices
