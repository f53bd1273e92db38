#include "devices/uart16550.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

#include <string>
#include <vector>

#include "testing/stalled_pipe.h"

namespace passvm::devices {
namespace {

enum : uint64_t { THR = 0, IER = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7 };

struct Fixture : ::testing::Test {
  int pipe_fds[2] = {-1, -1};
  std::vector<bool> irq_changes;
  std::unique_ptr<ConsoleOutput> console;  // not started: it writes at once
  std::unique_ptr<Uart16550> uart;
  void SetUp() override {
    ASSERT_EQ(pipe2(pipe_fds, O_NONBLOCK), 0);
    console = std::make_unique<ConsoleOutput>(pipe_fds[1]);
    uart = std::make_unique<Uart16550>(console.get(), [this](bool level) { irq_changes.push_back(level); });
  }
  void TearDown() override {
    uart.reset();
    console.reset();
    close(pipe_fds[0]);
    close(pipe_fds[1]);
  }
  uint8_t in(uint64_t reg) {
    uint8_t b = 0;
    uart->read(reg, {&b, 1});
    return b;
  }
  void out(uint64_t reg, uint8_t v) { uart->write(reg, {&v, 1}); }
  std::string output() {
    char buf[256];
    ssize_t n = ::read(pipe_fds[0], buf, sizeof buf);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }
  bool irq() const { return !irq_changes.empty() && irq_changes.back(); }
};

TEST_F(Fixture, TransmitGoesToTheOutputFd) {
  for (char c : std::string("hi\n")) out(THR, static_cast<uint8_t>(c));
  EXPECT_EQ(output(), "hi\n");
  EXPECT_EQ(in(LSR) & 0x60, 0x60) << "THRE and TEMT: always ready";
  EXPECT_TRUE(irq_changes.empty()) << "no interrupt enabled, no line change";
}

TEST_F(Fixture, TransmittedCountsWhatTheGuestSentOutOnly) {
  EXPECT_EQ(uart->transmitted(), 0u);
  out(LCR, 0x80);  // DLAB: offset 0 is the divisor's low byte, not the data register
  out(THR, 0x01);
  out(LCR, 0x03);
  EXPECT_EQ(uart->transmitted(), 0u) << "a divisor write is no output";
  out(MCR, 0x10);
  out(THR, 'L');
  EXPECT_EQ(uart->transmitted(), 0u) << "loopback stays inside the UART";
  out(MCR, 0x00);
  EXPECT_EQ(in(THR), 'L');
  out(THR, 'o');
  out(THR, 'k');
  EXPECT_EQ(uart->transmitted(), 2u);
  uart->flush();
  EXPECT_EQ(output(), "ok");
}

TEST_F(Fixture, StateShowsAWaitingThreInterruptWithoutAcknowledgingIt) {
  EXPECT_EQ(uart->state(), "IER 0x00 IIR 0x01 LCR 0x00 MCR 0x00 LSR 0x60, THRE not pending, line low, 0 bytes received");
  out(IER, 0x02);  // THRE interrupt on: pending at once
  const std::string want = "IER 0x02 IIR 0x02 LCR 0x00 MCR 0x00 LSR 0x60, THRE pending, line high, 0 bytes received";
  EXPECT_EQ(uart->state(), want);
  EXPECT_EQ(uart->state(), want) << "reading the state must not acknowledge THRE as an IIR read does";
  EXPECT_EQ(in(IIR) & 0x0f, 0x02);
  EXPECT_EQ(uart->state(), "IER 0x02 IIR 0x01 LCR 0x00 MCR 0x00 LSR 0x60, THRE not pending, line low, 0 bytes received");
  const uint8_t typed[] = {'a', 'b'};
  uart->receive(typed);
  EXPECT_NE(uart->state().find("LSR 0x61"), std::string::npos) << uart->state();
  EXPECT_NE(uart->state().find("1 bytes received"), std::string::npos) << "no FIFO: one byte held";
}

TEST_F(Fixture, TransmitBatchingIsAllowedOnlyWhileTheThreInterruptIsOff) {
  std::vector<bool> calls;
  uart->set_tx_batching([&](bool allowed) { calls.push_back(allowed); });
  out(IER, 0x01);  // receive interrupt only: no change
  out(IER, 0x03);  // THRE interrupt on: each write must exit again
  out(IER, 0x03);  // no change
  out(LCR, 0x80);
  out(IER, 0x00);  // with DLAB this is the divisor latch, not IER: no change
  out(LCR, 0x03);
  out(IER, 0x01);  // THRE interrupt off again
  EXPECT_EQ(calls, (std::vector<bool>{true, false, true}));
}

// KVM refusing to change batching (Vm::coalesce_pio throws) must not stop the guest's console: the UART
// keeps working, asks no more, and says so.
TEST_F(Fixture, ARefusedBatchingChangeLeavesTheUartWorking) {
  std::vector<bool> calls;
  uart->set_tx_batching([&](bool allowed) {
    calls.push_back(allowed);
    if (!allowed) throw std::runtime_error("unregistering coalesced port writes 0x3f8/1: No such device");
  });
  out(IER, 0x02);  // THRE interrupt on: refused
  out(IER, 0x00);
  out(IER, 0x02);
  EXPECT_EQ(calls, (std::vector<bool>{true, false}));
  out(THR, 'x');
  EXPECT_NE(uart->state().find("transmit batching left on: unregistering coalesced port writes"), std::string::npos)
      << uart->state();
  EXPECT_EQ(in(IER), 0x02);
}

// In loopback a write to the data register raises the receive interrupt at once: it must exit.
TEST_F(Fixture, TransmitBatchingIsOffInLoopback) {
  std::vector<bool> calls;
  uart->set_tx_batching([&](bool allowed) { calls.push_back(allowed); });
  out(MCR, 0x18);  // loopback, OUT2
  out(IER, 0x01);  // receive interrupt only
  out(MCR, 0x08);  // loopback off
  EXPECT_EQ(calls, (std::vector<bool>{true, false, true}));
}

TEST_F(Fixture, ScratchAndDivisorLatch) {
  out(SCR, 0xa5);
  EXPECT_EQ(in(SCR), 0xa5);
  out(IER, 0x05);
  out(LCR, 0x83);  // DLAB + 8N1
  out(THR, 0x01);  // DLL: must not transmit
  out(IER, 0x02);  // DLM: must not touch IER
  EXPECT_EQ(in(THR), 0x01);
  EXPECT_EQ(in(IER), 0x02);
  out(LCR, 0x03);
  EXPECT_EQ(in(IER), 0x05);
  EXPECT_EQ(in(LCR), 0x03);
  EXPECT_EQ(output(), "");
}

TEST_F(Fixture, ThreInterruptRaisedOnEnableAndAckedByIirRead) {
  EXPECT_EQ(in(IIR), 0x01);
  out(IER, 0x02);
  EXPECT_TRUE(irq());
  EXPECT_EQ(in(IIR), 0x02);
  EXPECT_FALSE(irq()) << "reading IIR with THRE as source clears it";
  EXPECT_EQ(in(IIR), 0x01);
  out(THR, 'x');
  EXPECT_TRUE(irq()) << "THR empty again after a transmit";
  out(IER, 0x00);
  EXPECT_FALSE(irq());
  EXPECT_EQ(irq_changes, (std::vector<bool>{true, false, true, false}));
}

TEST_F(Fixture, LoopbackEchoesAndReceiveDataHasPriorityOverThre) {
  out(MCR, 0x10);
  out(IER, 0x03);  // RDA + THRE
  EXPECT_EQ(in(IIR), 0x02);
  out(THR, 'A');
  EXPECT_EQ(output(), "") << "loopback stays inside the UART";
  EXPECT_EQ(in(LSR) & 0x01, 0x01);
  EXPECT_EQ(in(IIR), 0x04) << "received data outranks THRE";
  EXPECT_TRUE(irq());
  EXPECT_EQ(in(THR), 'A');
  EXPECT_EQ(in(LSR) & 0x01, 0x00);
  EXPECT_EQ(in(IIR), 0x02) << "THRE still pending once data is read";
  EXPECT_EQ(in(IIR), 0x01);
  EXPECT_FALSE(irq());
}

TEST_F(Fixture, LoopbackModemLinesAndDeltas) {
  out(MCR, 0x10);
  EXPECT_EQ(in(MSR) & 0xf0, 0x00);
  out(MCR, 0x10 | 0x01 | 0x02 | 0x04 | 0x08);  // DTR RTS OUT1 OUT2
  uint8_t msr = in(MSR);
  EXPECT_EQ(msr & 0xf0, 0xf0);
  EXPECT_EQ(msr & 0x0f, 0x0b) << "DCTS DDSR DDCD; no TERI on a rising ring";
  EXPECT_EQ(in(MSR) & 0x0f, 0x00) << "reading MSR clears the deltas";
  out(IER, 0x08);
  out(MCR, 0x10 | 0x01 | 0x02 | 0x08);  // ring falls
  EXPECT_EQ(in(IIR), 0x00) << "modem status interrupt";
  EXPECT_EQ(in(MSR) & 0x0f, 0x04);
  EXPECT_EQ(in(IIR), 0x01);
  out(MCR, 0x00);
  EXPECT_EQ(in(MSR) & 0xb0, 0xb0) << "outside loopback the line looks connected";
}

TEST_F(Fixture, FifoHolds16ThenOverrunsWithLineStatusInterrupt) {
  out(FCR, 0x07);  // enable, clear both, trigger 1
  EXPECT_EQ(in(IIR) & 0xc0, 0xc0);
  out(MCR, 0x10);
  for (int i = 0; i < 16; i++) out(THR, static_cast<uint8_t>('a' + i));
  EXPECT_EQ(in(LSR) & 0x02, 0) << "16 bytes fit";
  out(IER, 0x05);  // RLS + RDA
  out(THR, 'z');
  EXPECT_EQ(in(IIR) & 0x0f, 0x06) << "overrun: line status outranks data";
  EXPECT_EQ(in(LSR) & 0x03, 0x03);
  EXPECT_EQ(in(LSR) & 0x02, 0x00) << "LSR read cleared the overrun";
  EXPECT_EQ(in(IIR) & 0x0f, 0x04);
  std::string got;
  while (in(LSR) & 0x01) got += static_cast<char>(in(THR));
  EXPECT_EQ(got, "abcdefghijklmnop");
  EXPECT_FALSE(irq());
}

TEST_F(Fixture, BelowTriggerLevelReportsCharacterTimeout) {
  out(FCR, 0xc1);  // trigger at 14
  out(IER, 0x01);
  uint8_t data[3] = {'1', '2', '3'};
  EXPECT_EQ(uart->receive(data), 3u);
  EXPECT_EQ(in(IIR) & 0x0f, 0x0c);
  out(FCR, 0x03);  // clear receive FIFO
  EXPECT_EQ(in(LSR) & 0x01, 0x00);
  EXPECT_FALSE(irq());
}

TEST_F(Fixture, ReceiveIsBoundedByTheFifoAndSignalsRoom) {
  std::vector<uint8_t> data(20, 'q');
  EXPECT_EQ(uart->receive(data), 1u) << "FIFO off: one holding register";
  pollfd p{uart->rx_space_fd(), POLLIN, 0};
  out(FCR, 0x01);  // switching the FIFO on empties it: room for the refused bytes
  ASSERT_EQ(poll(&p, 1, 0), 1);
  uint64_t count;
  ASSERT_EQ(::read(uart->rx_space_fd(), &count, sizeof count), 8);
  EXPECT_EQ(uart->receive(data), 16u);
  EXPECT_EQ(poll(&p, 1, 0), 0) << "no room yet";
  EXPECT_EQ(in(THR), 'q');
  EXPECT_EQ(poll(&p, 1, 0), 1) << "a byte read makes room and says so";
  EXPECT_EQ(uart->receive(data), 1u);
}

// A console nobody reads: the UART neither blocks nor loses what it said it took. It shows the
// transmitter busy once the 4 KiB it holds have less than a FIFO's load left, takes that load still,
// loses (and counts) what the guest writes beyond it, and when the reader reads again hands over the
// rest and raises the THRE interrupt.
TEST(UartOnAStalledConsole, ShowsTheTransmitterBusyAndResumesWithAThreInterrupt) {
  testing::StalledPipe p;
  ASSERT_GE(p.fds[1], 0);
  ConsoleOutput console(p.fds[1], 64);
  std::atomic<bool> line{false};
  Uart16550 uart(&console, [&](bool level) { line = level; });
  console.start();
  auto in = [&](uint64_t reg) {
    uint8_t b = 0;
    uart.read(reg, {&b, 1});
    return b;
  };
  auto out = [&](uint64_t reg, uint8_t v) { uart.write(reg, {&v, 1}); };
  out(IER, 0x02);
  EXPECT_TRUE(line) << "THRE interrupt on enable";
  EXPECT_EQ(in(IIR) & 0x0f, 0x02);
  EXPECT_FALSE(line);

  std::string stream;
  for (int i = 0; stream.size() < 64 + 4096 + 100; i++) stream += "guest line " + std::to_string(i) + "\n";
  size_t busy_at = 0;
  for (size_t i = 0; i < stream.size(); i++) {
    if (!busy_at && !(in(LSR) & 0x20)) busy_at = i;
    out(THR, static_cast<uint8_t>(stream[i]));
    if (in(LSR) & 0x20) {
      EXPECT_EQ(in(IIR) & 0x0f, 0x02) << "byte " << i;  // the guest's driver acknowledges
    }
  }
  // Busy once the console's 64 bytes are taken and the UART's 4096 have less than a FIFO's load left; the
  // 15 bytes the guest writes after that still fit, the rest is lost.
  ASSERT_EQ(busy_at, 64u + 4096u - 15u);
  const size_t taken = 64 + 4096;
  EXPECT_EQ(in(LSR) & 0x60, 0) << "THRE and TEMT clear while busy";
  EXPECT_FALSE(line) << "no THRE interrupt while busy";
  uart.flush();  // the control loop's periodic flush returns as well
  EXPECT_NE(uart.state().find("transmitter busy"), std::string::npos) << uart.state();
  EXPECT_NE(uart.state().find(std::to_string(stream.size() - taken) + " bytes written while busy were lost"),
            std::string::npos)
      << uart.state();

  EXPECT_EQ(p.read_until(taken), stream.substr(0, taken));
  for (int i = 0; i < 500 && !line; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(line) << "THRE interrupt once the console took the rest";
  EXPECT_EQ(in(LSR) & 0x60, 0x60);
  EXPECT_EQ(in(IIR) & 0x0f, 0x02);
  console.finish();
}

}  // namespace
}  // namespace passvm::devices
