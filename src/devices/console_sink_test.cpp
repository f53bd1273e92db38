#include "devices/console_sink.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

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
