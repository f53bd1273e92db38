// The virtio console over its MMIO transport, driven the way Linux's virtio_mmio and virtio_console
// drivers drive it: registers through the transport, rings and buffers in real guest RAM.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "memory/guest_memory.h"
#include "memory/layout.h"
#include "virtio/console.h"
#include "testing/stalled_pipe.h"
#include "virtio/mmio_transport.h"

namespace passvm::virtio {
namespace {

constexpr uint64_t kStatus = 0x70, kQueueSel = 0x30, kQueueNum = 0x38, kQueueReady = 0x44, kNotify = 0x50;
constexpr uint64_t kIntStatus = 0x60, kIntAck = 0x64;
constexpr uint32_t kAck = 1, kDriver = 2, kDriverOk = 4, kFeaturesOk = 8, kNeedsReset = 0x40;
constexpr uint16_t kNext = 1, kWrite = 2;
constexpr uint16_t kSize = 8;

// A guest driver's half: queue rings at fixed guest addresses, buffers above them.
struct Pipe {
  int fds[2] = {-1, -1};
  explicit Pipe(bool make) {
    if (make) {
      EXPECT_EQ(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
    }
  }
  ~Pipe() {
    for (int fd : fds)
      if (fd >= 0) close(fd);
  }
};

struct Driver {
  GuestMemory mem{16 * layout::MiB, false};
  Pipe out;
  devices::ConsoleOutput writer;  // not started (it writes at once) unless a test starts it
  Console console;
  std::vector<bool> irq_levels;
  MmioTransport transport{mem, console, [this](bool level) { irq_levels.push_back(level); }};
  std::vector<uint16_t> avail_idx = {0, 0};

  explicit Driver(bool with_pipe = true, int out_fd = -2, size_t capacity = devices::ConsoleOutput::kDefaultCapacity)
      : out(with_pipe), writer(out_fd == -2 ? out.fds[1] : out_fd, capacity), console(&writer) {
    console.attach(transport);
  }
  ~Driver() { writer.finish(std::chrono::milliseconds(0)); }  // its thread, if started, reaches the transport

  uint32_t reg(uint64_t offset) {
    uint32_t v = 0;
    transport.read(offset, {reinterpret_cast<uint8_t*>(&v), 4});
    return v;
  }
  void set(uint64_t offset, uint32_t v) { transport.write(offset, {reinterpret_cast<const uint8_t*>(&v), 4}); }

  static uint64_t desc(uint16_t q) { return 0x100000 + q * 0x10000ull; }
  static uint64_t avail(uint16_t q) { return desc(q) + 0x1000; }
  static uint64_t used(uint16_t q) { return desc(q) + 0x2000; }
  static uint64_t buffer(uint16_t q, uint16_t i) { return 0x400000 + q * 0x100000ull + i * 0x1000ull; }

  // Linux's order: acknowledge, features, FEATURES_OK, queues, DRIVER_OK.
  void start(bool accept_version1 = true) {
    set(kStatus, kAck);
    set(kStatus, kAck | kDriver);
    set(0x24, 1);
    set(0x20, accept_version1 ? 1 : 0);
    set(0x24, 0);
    set(0x20, 0);
    set(kStatus, kAck | kDriver | kFeaturesOk);
    if (!(reg(kStatus) & kFeaturesOk)) return;
    for (uint16_t q = 0; q < 2; q++) {
      set(kQueueSel, q);
      set(kQueueNum, kSize);
      set(0x80, static_cast<uint32_t>(desc(q)));
      set(0x84, 0);
      set(0x90, static_cast<uint32_t>(avail(q)));
      set(0x94, 0);
      set(0xa0, static_cast<uint32_t>(used(q)));
      set(0xa4, 0);
      set(kQueueReady, 1);
    }
    set(kStatus, kAck | kDriver | kFeaturesOk | kDriverOk);
  }

  void write_desc(uint16_t q, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    uint8_t d[16];
    std::memcpy(d, &addr, 8);
    std::memcpy(d + 8, &len, 4);
    std::memcpy(d + 12, &flags, 2);
    std::memcpy(d + 14, &next, 2);
    mem.write(desc(q) + 16ull * i, d);
  }
  void publish(uint16_t q, uint16_t head) {
    uint16_t& idx = avail_idx[q];
    mem.write(avail(q) + 4 + 2 * (idx % kSize), {reinterpret_cast<const uint8_t*>(&head), 2});
    idx++;
    mem.write(avail(q) + 2, {reinterpret_cast<const uint8_t*>(&idx), 2});
  }
  void set_avail_flags(uint16_t q, uint16_t flags) { mem.write(avail(q), {reinterpret_cast<const uint8_t*>(&flags), 2}); }
  uint16_t used_idx(uint16_t q) {
    uint16_t v;
    mem.read(used(q) + 2, {reinterpret_cast<uint8_t*>(&v), 2});
    return v;
  }
  std::pair<uint32_t, uint32_t> used_elem(uint16_t q, uint16_t i) {
    uint32_t e[2];
    mem.read(used(q) + 4 + 8ull * (i % kSize), {reinterpret_cast<uint8_t*>(e), 8});
    return {e[0], e[1]};
  }
  // Puts text into guest RAM and publishes it on the transmit queue as one chain of `pieces` descriptors.
  void transmit(const std::string& text, uint16_t first_desc, size_t pieces = 1) {
    size_t at = 0;
    for (size_t p = 0; p < pieces; p++) {
      size_t n = p + 1 == pieces ? text.size() - at : text.size() / pieces;
      uint16_t i = static_cast<uint16_t>(first_desc + p);
      mem.write(buffer(1, i), {reinterpret_cast<const uint8_t*>(text.data() + at), n});
      write_desc(1, i, buffer(1, i), static_cast<uint32_t>(n), p + 1 == pieces ? 0 : kNext, static_cast<uint16_t>(i + 1));
      at += n;
    }
    publish(1, first_desc);
    set(kNotify, 1);
  }
  std::string output() {
    char buf[4096];
    ssize_t n = ::read(out.fds[0], buf, sizeof buf);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }
};

TEST(VirtioMmio, IdentifiesAsVersion2Console) {
  Driver d(false);
  EXPECT_EQ(d.reg(0x000), 0x74726976u);
  EXPECT_EQ(d.reg(0x004), 2u);
  EXPECT_EQ(d.reg(0x008), Console::kType);
  d.set(0x14, 1);
  EXPECT_EQ(d.reg(0x010), 1u);  // VIRTIO_F_VERSION_1, bit 32
  d.set(0x14, 0);
  EXPECT_EQ(d.reg(0x010), 0u);  // no console features: no size, no multiport, no emergency write
  d.set(kQueueSel, 1);
  EXPECT_EQ(d.reg(0x034), Queue::kMaxSize);
  d.set(kQueueSel, 2);
  EXPECT_EQ(d.reg(0x034), 0u);  // the console has two queues
}

TEST(VirtioMmio, RefusesDriverWithoutVersion1) {
  Driver d(false);
  d.start(/*accept_version1=*/false);
  EXPECT_EQ(d.reg(kStatus) & kFeaturesOk, 0u);
}

TEST(VirtioConsole, TransmitsChainsAndRaisesTheInterrupt) {
  Driver d;
  d.start();
  EXPECT_EQ(d.reg(kStatus), kAck | kDriver | kFeaturesOk | kDriverOk);
  d.transmit("hello, ", 0);
  EXPECT_EQ(d.console.transmitted(), 7u);
  d.transmit("virtio world\r\n", 1, 3);
  EXPECT_EQ(d.output(), "hello, virtio world\r\n");
  EXPECT_EQ(d.console.transmitted(), 21u);
  ASSERT_EQ(d.used_idx(1), 2);
  EXPECT_EQ(d.used_elem(1, 0), std::make_pair(0u, 0u));
  EXPECT_EQ(d.used_elem(1, 1), std::make_pair(1u, 0u));
  EXPECT_EQ(d.reg(kIntStatus), 1u);
  EXPECT_EQ(d.irq_levels, std::vector<bool>{true});
  d.set(kIntAck, 1);
  EXPECT_EQ(d.reg(kIntStatus), 0u);
  EXPECT_EQ(d.irq_levels, (std::vector<bool>{true, false}));
}

TEST(VirtioConsole, NoInterruptWhenTheDriverAsksForNone) {
  Driver d;
  d.start();
  d.set_avail_flags(1, 1);  // VIRTQ_AVAIL_F_NO_INTERRUPT: Linux's console polls for its buffers
  d.transmit("quiet\n", 0);
  EXPECT_EQ(d.output(), "quiet\n");
  EXPECT_EQ(d.used_idx(1), 1);
  EXPECT_EQ(d.reg(kIntStatus), 0u);
  EXPECT_TRUE(d.irq_levels.empty());
}

TEST(VirtioConsole, InputWaitsForBuffersThenFillsThem) {
  Driver d;
  const uint8_t text[] = {'l', 's', '\r'};
  EXPECT_EQ(d.console.receive(text), 0u);  // no driver yet
  d.start();
  pollfd p{d.console.rx_space_fd(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 0), 0);
  // Two receive buffers of 2 bytes each.
  for (uint16_t i = 0; i < 2; i++) {
    d.write_desc(0, i, Driver::buffer(0, i), 2, kWrite, 0);
    d.publish(0, i);
  }
  d.set(kNotify, 0);
  EXPECT_EQ(poll(&p, 1, 0), 1);  // ConsoleInput retries now
  EXPECT_EQ(d.console.receive(text), 3u);
  ASSERT_EQ(d.used_idx(0), 2);
  EXPECT_EQ(d.used_elem(0, 0), std::make_pair(0u, 2u));
  EXPECT_EQ(d.used_elem(0, 1), std::make_pair(1u, 1u));
  char got[4] = {};
  d.mem.read(Driver::buffer(0, 0), {reinterpret_cast<uint8_t*>(got), 2});
  d.mem.read(Driver::buffer(0, 1), {reinterpret_cast<uint8_t*>(got + 2), 1});
  EXPECT_STREQ(got, "ls\r");
  EXPECT_EQ(d.reg(kIntStatus), 1u);
  EXPECT_EQ(d.console.receive(text), 0u);  // buffers used up
}

// A guest whose other vCPU puts a buffer back on the transmit ring as soon as it is used: the notifying
// vCPU serves one ring's worth and returns (it may be asked to stop or pause), it does not loop for ever.
TEST(VirtioConsole, ANotificationServesAtMostOneRing) {
  Driver d;
  d.start();
  d.write_desc(1, 0, Driver::buffer(1, 0), 0, 0, 0);
  d.publish(1, 0);
  std::atomic<bool> done{false};
  std::thread other_vcpu([&] {
    for (uint16_t seen = 0, n = 0; !done && n < 5000;)
      if (d.used_idx(1) != seen) {
        seen++;
        n++;
        d.publish(1, 0);
      }
  });
  d.set(kNotify, 1);
  done = true;
  other_vcpu.join();
  EXPECT_LE(d.used_idx(1), kSize);
  EXPECT_GE(d.used_idx(1), 1);
}

// Receive buffers of no length are given back empty, and the input goes into the next ones.
TEST(VirtioConsole, EmptyReceiveBuffersAreSkipped) {
  Driver d;
  d.start();
  d.write_desc(0, 0, Driver::buffer(0, 0), 0, kWrite, 0);
  d.publish(0, 0);
  d.write_desc(0, 1, Driver::buffer(0, 1), 2, kWrite, 0);
  d.publish(0, 1);
  const uint8_t text[] = {'o', 'k'};
  EXPECT_EQ(d.console.receive(text), 2u);
  ASSERT_EQ(d.used_idx(0), 2);
  EXPECT_EQ(d.used_elem(0, 0), std::make_pair(0u, 0u));
  EXPECT_EQ(d.used_elem(0, 1), std::make_pair(1u, 2u));
}

// Host input into a receive buffer outside guest RAM breaks the queue, and the driver is told so.
TEST(VirtioConsole, ReceiveQueueBrokenByInputIsReported) {
  Driver d;
  d.start();
  d.write_desc(0, 0, 0xfee00000, 64, kWrite, 0);
  d.publish(0, 0);
  const uint8_t c = 'x';
  EXPECT_EQ(d.console.receive({&c, 1}), 0u);
  EXPECT_TRUE(d.reg(kStatus) & kNeedsReset);
  EXPECT_EQ(d.reg(kIntStatus) & 2u, 2u);
}

TEST(VirtioConsole, BufferOutsideRamBreaksTheQueueNotPassvm) {
  Driver d;
  d.start();
  d.write_desc(1, 0, 0xfee00000, 64, 0, 0);  // the local APIC, not RAM
  d.publish(1, 0);
  d.set(kNotify, 1);
  EXPECT_EQ(d.output(), "");
  EXPECT_EQ(d.used_idx(1), 0);
  EXPECT_TRUE(d.reg(kStatus) & kNeedsReset);
  EXPECT_EQ(d.reg(kIntStatus), 2u);  // configuration change: the driver is told
  EXPECT_NE(d.transport.error().find("outside guest RAM"), std::string::npos);
  d.transmit("after\n", 1);  // nothing more until a reset
  EXPECT_EQ(d.output(), "");

  d.set(kStatus, 0);  // reset: all afresh
  EXPECT_EQ(d.reg(kStatus), 0u);
  EXPECT_EQ(d.transport.error(), "");
  d.avail_idx = {0, 0};
  d.mem.write(Driver::avail(1) + 2, std::vector<uint8_t>{0, 0});
  d.start();
  d.transmit("again\n", 0);
  EXPECT_EQ(d.output(), "again\n");
}

TEST(VirtioConsole, QueueDisabledByTheDriverServesNothing) {
  Driver d;
  d.start();
  d.set(kQueueSel, 1);
  d.set(kQueueReady, 0);  // Linux's vm_del_vq, which reads the register back
  EXPECT_EQ(d.reg(kQueueReady), 0u);
  d.transmit("gone\n", 0);
  EXPECT_EQ(d.output(), "");
  EXPECT_EQ(d.used_idx(1), 0);
  EXPECT_EQ(d.transport.error(), "");
}

TEST(VirtioConsole, ChainAsLargeAsGuestRamIsWrittenNotCopied) {
  Driver d(false);
  int null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(null_fd, 0);
  devices::ConsoleOutput null_output(null_fd);
  Console console(&null_output);
  MmioTransport transport(d.mem, console, {});
  console.attach(transport);
  // A transport of its own over the harness's guest RAM, whose helpers write the rings.
  auto set = [&](uint64_t off, uint32_t v) { transport.write(off, {reinterpret_cast<const uint8_t*>(&v), 4}); };
  set(kStatus, kAck | kDriver);
  set(0x24, 1);
  set(0x20, 1);
  set(kStatus, kAck | kDriver | kFeaturesOk);
  set(kQueueSel, 1);
  set(kQueueNum, kSize);
  set(0x80, static_cast<uint32_t>(Driver::desc(1)));
  set(0x90, static_cast<uint32_t>(Driver::avail(1)));
  set(0xa0, static_cast<uint32_t>(Driver::used(1)));
  set(kQueueReady, 1);
  set(kStatus, kAck | kDriver | kFeaturesOk | kDriverOk);
  // One chain of eight descriptors over guest RAM again and again, 72 MiB in all; the first is all of it.
  for (uint16_t i = 0; i < kSize; i++)
    d.write_desc(1, i, 0, 2 * layout::MiB * (i % 8), i + 1 < kSize ? kNext : 0, static_cast<uint16_t>(i + 1));
  d.write_desc(1, 0, 0, 16 * layout::MiB, kNext, 1);
  d.publish(1, 0);
  set(kNotify, 1);
  EXPECT_EQ(d.used_idx(1), 1);
  EXPECT_EQ(transport.error(), "");
  close(null_fd);
}

// A console nobody reads: the driver's buffers wait in the ring (the driver waits, as for a slow line)
// and go out, used and with an interrupt, once the reader reads again. Nothing blocks meanwhile.
TEST(VirtioConsole, BuffersWaitInTheRingWhileTheConsoleIsFull) {
  passvm::testing::StalledPipe stalled;
  ASSERT_GE(stalled.fds[1], 0);
  Driver d(false, stalled.fds[1], 8);
  d.start();
  d.writer.start();
  d.transmit("1234567", 0);
  d.transmit("abc\n", 1);
  EXPECT_EQ(d.used_idx(1), 2) << "a byte of room takes a whole buffer: a slow reader loses nothing";
  d.transmit("xyz\n", 2);
  EXPECT_EQ(d.used_idx(1), 2) << "the console is full: the buffer stays in the ring";
  d.set(kIntAck, 1);
  EXPECT_EQ(stalled.read_until(15), "1234567abc\nxyz\n");
  for (int i = 0; i < 500 && d.used_idx(1) != 3; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(d.used_idx(1), 3);
  EXPECT_EQ(d.reg(kIntStatus), 1u) << "the driver hears of the buffer used late";
  EXPECT_EQ(d.transport.error(), "");
}

// A chain larger than the console's capacity plus kChainSlack (a reader is stalled) is taken up to that
// bound over all of its buffers, and what is cut is counted as dropped.
TEST(VirtioConsole, AChainPastItsBoundIsCutThereAndTheCutCounted) {
  passvm::testing::StalledPipe stalled;
  ASSERT_GE(stalled.fds[1], 0);
  constexpr size_t kCapacity = 8, kPiece = 40 << 10;
  Driver d(false, stalled.fds[1], kCapacity);
  d.start();
  d.writer.start();
  d.mem.write(Driver::buffer(1, 0), std::vector<uint8_t>(kPiece, 'c'));
  d.write_desc(1, 0, Driver::buffer(1, 0), kPiece, kNext, 1);
  d.write_desc(1, 1, Driver::buffer(1, 0), kPiece, 0, 0);
  d.publish(1, 0);
  d.set(kNotify, 1);
  EXPECT_EQ(d.used_idx(1), 1);
  const size_t kept = kCapacity + Console::kChainSlack;
  EXPECT_EQ(d.writer.dropped(), 2 * kPiece - kept);
  EXPECT_EQ(stalled.read_until(kept).size(), kept);
  EXPECT_EQ(d.transport.error(), "");
}

TEST(VirtioConsole, DescriptorLoopEnds) {
  Driver d;
  d.start();
  d.mem.write(Driver::buffer(1, 0), std::vector<uint8_t>{'x'});
  d.write_desc(1, 0, Driver::buffer(1, 0), 1, kNext, 1);
  d.write_desc(1, 1, Driver::buffer(1, 0), 1, kNext, 0);
  d.publish(1, 0);
  d.set(kNotify, 1);
  EXPECT_EQ(d.output(), "");
  EXPECT_NE(d.transport.error().find("loop"), std::string::npos);
}

TEST(VirtioConsole, IndexBeyondQueueAndRunawayAvailIndexBreakTheQueue) {
  {
    Driver d;
    d.start();
    d.publish(1, kSize);  // head index 8 in a queue of 8
    d.set(kNotify, 1);
    EXPECT_NE(d.transport.error().find("beyond"), std::string::npos);
  }
  {
    Driver d;
    d.start();
    uint16_t idx = 1000;
    d.mem.write(Driver::avail(1) + 2, {reinterpret_cast<const uint8_t*>(&idx), 2});
    d.set(kNotify, 1);
    EXPECT_NE(d.transport.error().find("ahead"), std::string::npos);
    EXPECT_EQ(d.used_idx(1), 0);
  }
}

TEST(VirtioConsole, RingsOutsideRamOrMisalignedAreRefused) {
  for (uint64_t bad_desc : {uint64_t{0xfec00000}, uint64_t{0x100008}}) {
    Driver d(false);
    d.set(kStatus, kAck | kDriver);
    d.set(0x24, 1);
    d.set(0x20, 1);
    d.set(kStatus, kAck | kDriver | kFeaturesOk);
    d.set(kQueueSel, 1);
    d.set(kQueueNum, kSize);
    d.set(0x80, static_cast<uint32_t>(bad_desc));
    d.set(0x90, static_cast<uint32_t>(Driver::avail(1)));
    d.set(0xa0, static_cast<uint32_t>(Driver::used(1)));
    d.set(kQueueReady, 1);
    EXPECT_EQ(d.reg(kQueueReady), 0u) << std::hex << bad_desc;
    EXPECT_TRUE(d.reg(kStatus) & kNeedsReset);
  }
  Driver d(false);
  d.set(kQueueSel, 0);
  d.set(kQueueNum, 6);  // not a power of two
  d.set(0x80, static_cast<uint32_t>(Driver::desc(0)));
  d.set(0x90, static_cast<uint32_t>(Driver::avail(0)));
  d.set(0xa0, static_cast<uint32_t>(Driver::used(0)));
  d.set(kQueueReady, 1);
  EXPECT_EQ(d.reg(kQueueReady), 0u);
}

}  // namespace
}  // namespace passvm::virtio
