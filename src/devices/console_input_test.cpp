#include "devices/console_input.h"
#include "devices/uart16550.h"

#include <fcntl.h>
#include <pty.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <string>
#include <thread>

namespace passvm::devices {
namespace {

using namespace std::chrono_literals;

uint8_t in(Uart16550& u, uint64_t reg) {
  uint8_t b = 0;
  u.read(reg, {&b, 1});
  return b;
}

// Reads what the guest would see, polling LSR.DR like a driver, for up to a second.
std::string drain(Uart16550& u, size_t want) {
  std::string got;
  auto deadline = std::chrono::steady_clock::now() + 2s;
  while (got.size() < want && std::chrono::steady_clock::now() < deadline) {
    if (in(u, 5) & 0x01)
      got += static_cast<char>(in(u, 0));
    else
      std::this_thread::sleep_for(1ms);
  }
  return got;
}

double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

TEST(ConsoleInput, PipeInputReachesGuestWithoutLossThenEofIsQuiet) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  Uart16550 uart(nullptr, {});
  uint8_t fcr = 0x01;
  uart.write(2, {&fcr, 1});
  ConsoleInput input(fds[0], uart);
  EXPECT_FALSE(input.raw_mode()) << "a pipe is not a terminal";
  std::string text;
  for (int i = 0; i < 100; i++) text += static_cast<char>('0' + i % 10);  // far more than the FIFO holds
  ASSERT_EQ(write(fds[1], text.data(), text.size()), static_cast<ssize_t>(text.size()));
  close(fds[1]);  // EOF
  EXPECT_EQ(drain(uart, text.size()), text);

  double before = cpu_seconds();
  std::this_thread::sleep_for(300ms);
  EXPECT_LT(cpu_seconds() - before, 0.05) << "the reader must not spin on EOF";
  auto t0 = std::chrono::steady_clock::now();
  input.stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  close(fds[0]);
}

TEST(ConsoleInput, TerminalGoesRawAndIsRestored) {
  int master = -1, slave = -1;
  ASSERT_EQ(openpty(&master, &slave, nullptr, nullptr, nullptr), 0);
  termios before{};
  ASSERT_EQ(tcgetattr(slave, &before), 0);
  ASSERT_TRUE(before.c_lflag & ICANON);
  Uart16550 uart(nullptr, {});
  std::atomic<int> quits{0};
  {
    ConsoleInput input(slave, uart, [&] { quits++; });
    EXPECT_TRUE(input.raw_mode());
    termios raw{};
    ASSERT_EQ(tcgetattr(slave, &raw), 0);
    EXPECT_FALSE(raw.c_lflag & (ICANON | ECHO | ISIG));

    // Ctrl-C is data for the guest; Ctrl-A Ctrl-A is one Ctrl-A; Ctrl-A x quits.
    const char keys[] = "\x03" "\x01\x01" "\x01x";
    ASSERT_EQ(write(master, keys, 5), 5);
    EXPECT_EQ(drain(uart, 2), std::string("\x03\x01"));
    for (int i = 0; i < 200 && quits == 0; i++) std::this_thread::sleep_for(5ms);
    EXPECT_EQ(quits, 1);

    input.restore();  // what the signal path calls
    termios back{};
    ASSERT_EQ(tcgetattr(slave, &back), 0);
    EXPECT_TRUE(back.c_lflag & ICANON);
    EXPECT_FALSE(input.raw_mode());
  }
  termios after{};
  ASSERT_EQ(tcgetattr(slave, &after), 0);
  EXPECT_EQ(after.c_lflag, before.c_lflag);
  EXPECT_EQ(after.c_iflag, before.c_iflag);
  close(master);
  close(slave);
}

// passvm started in the background of the terminal its console is on (`passvm --api-socket S &`): taking
// that terminal's input (raw mode, reads) would get the whole process stopped by SIGTTOU or SIGTTIN.
TEST(ConsoleInput, ABackgroundProcessLeavesItsTerminalAlone) {
  int master = -1, slave = -1;
  ASSERT_EQ(openpty(&master, &slave, nullptr, nullptr, nullptr), 0);
  pid_t leader = fork();
  ASSERT_GE(leader, 0);
  if (leader == 0) {  // a session whose terminal is the pty, as a login shell's
    if (setsid() < 0 || ioctl(slave, TIOCSCTTY, 0) < 0) _exit(10);
    pid_t job = fork();
    if (job < 0) _exit(11);
    if (job == 0) {  // a background job of that shell
      setpgid(0, 0);
      Uart16550 uart(nullptr, {});
      { ConsoleInput input(slave, uart); }
      _exit(0);
    }
    setpgid(job, job);
    int st = 0;
    waitpid(job, &st, WUNTRACED);
    if (WIFSTOPPED(st)) {
      kill(job, SIGKILL);
      waitpid(job, &st, 0);
      _exit(1);
    }
    _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 12);
  }
  int st = 0;
  ASSERT_EQ(waitpid(leader, &st, 0), leader);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 0) << "1: the job was stopped by its terminal";
  close(master);
  close(slave);
}

// A guest that takes no input (no driver on its console, or a hung one): what is typed piles up, and
// Ctrl-A x, typed after it, must still quit.
class DeafGuest final : public ConsoleSink {
 public:
  DeafGuest() : fd_(eventfd(0, EFD_CLOEXEC)) {}
  ~DeafGuest() { close(fd_); }
  size_t receive(std::span<const uint8_t>) override { return 0; }
  int rx_space_fd() const override { return fd_; }

 private:
  int fd_;
};

TEST(ConsoleInput, CtrlAXQuitsWhenTheGuestTakesNoInput) {
  int master = -1, slave = -1;
  ASSERT_EQ(openpty(&master, &slave, nullptr, nullptr, nullptr), 0);
  ASSERT_EQ(fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK), 0);
  DeafGuest guest;
  std::atomic<int> quits{0};
  testing::internal::CaptureStderr();
  {
    ConsoleInput input(slave, guest, [&] { quits++; });
    // More than the terminal and the typed-ahead bound hold, then the escape.
    std::string typed(2 * ConsoleInput::kTypedAhead, 'a');
    typed += "\x01x";
    size_t sent = 0;
    for (auto until = std::chrono::steady_clock::now() + 10s; sent < typed.size() && std::chrono::steady_clock::now() < until;) {
      ssize_t n = write(master, typed.data() + sent, std::min<size_t>(typed.size() - sent, 4096));
      if (n > 0) sent += static_cast<size_t>(n);
      else std::this_thread::sleep_for(1ms);
    }
    EXPECT_EQ(sent, typed.size()) << "the terminal was not read while the guest took nothing";
    for (int i = 0; i < 400 && quits == 0; i++) std::this_thread::sleep_for(5ms);
    EXPECT_EQ(quits, 1) << "Ctrl-A x was not seen";
  }
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("the guest is not reading its console"), std::string::npos) << said;
  close(master);
  close(slave);
}

TEST(ConsoleInput, DestructorRestoresTerminal) {
  int master = -1, slave = -1;
  ASSERT_EQ(openpty(&master, &slave, nullptr, nullptr, nullptr), 0);
  termios before{};
  ASSERT_EQ(tcgetattr(slave, &before), 0);
  Uart16550 uart(nullptr, {});
  { ConsoleInput input(slave, uart); }
  termios after{};
  ASSERT_EQ(tcgetattr(slave, &after), 0);
  EXPECT_EQ(after.c_lflag, before.c_lflag);
  close(master);
  close(slave);
}

}  // namespace
}  // namespace passvm::devices
