// Real-KVM tests: tiny hand-assembled guests entered in 64-bit mode through
// boot::setup_long_mode and Vcpu::setup_long_mode, talking to the Buses.
#include "kvm/vcpu.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "boot/long_mode.h"
#include "kvm/cpuid.h"
#include "kvm/uapi.h"
#include "memory/layout.h"

namespace passvm {
namespace {

constexpr uint64_t kCodeAddr = 0x100000;
constexpr uint64_t kDataAddr = 0x101000;
constexpr uint64_t kInAddr = 0x101100;
constexpr uint64_t kMmioAddr = 0xd0000000;  // in the 32-bit hole, identity mapped, no RAM
constexpr uint16_t kDonePort = 0x86;        // writing here powers the test machine off

struct Access {
  uint64_t offset;
  std::vector<uint8_t> data;
};

// Records writes; reads return a counting sequence from `next`.
// mov al,1; out 0x86,al; hlt; jmp back to hlt
const std::vector<uint8_t> kDone = {0xb0, 0x01, 0xe6, 0x86, 0xf4, 0xeb, 0xfd};

std::vector<uint8_t> operator+(std::vector<uint8_t> a, const std::vector<uint8_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

struct Recorder : BusDevice {
  std::mutex lock;
  std::vector<Access> writes;
  std::vector<uint64_t> read_offsets;
  uint8_t next = 'a';
  ExitControl* ctl = nullptr;
  uint64_t done_offset = ~0ull;
  void read(uint64_t offset, std::span<uint8_t> data) override {
    std::lock_guard g(lock);
    read_offsets.push_back(offset);
    for (auto& b : data) b = next++;
  }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    std::lock_guard g(lock);
    writes.push_back({offset, {data.begin(), data.end()}});
    if (ctl && offset == done_offset) ctl->request(ExitReason::PowerOff, "test done");
  }
};

class VcpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    try {
      kvm_ = std::make_unique<Kvm>();
    } catch (const std::runtime_error& e) {
      GTEST_SKIP() << "no usable KVM: " << e.what();
    }
    vm_ = std::make_unique<Vm>(*kvm_);
    mem_ = std::make_unique<GuestMemory>(16 * layout::MiB, false);
    for (const auto& r : mem_->regions()) vm_->map_memory(r.gpa, r.size, r.hva);
    ports_.ctl = &ctl_;
    ports_.done_offset = kDonePort - 0x80;
    pio_.add(0x80, 8, &ports_);
    pio_.add(layout::kCom1Port, 8, &uart_);
    mmio_.add(kMmioAddr, 0x1000, &mmio_dev_);
  }

  std::unique_ptr<Vcpu> make_vcpu(uint32_t index, uint32_t count, const std::vector<uint8_t>& code) {
    mem_->write(kCodeAddr, code);
    auto v = std::make_unique<Vcpu>(*vm_, index, count, pio_, mmio_, ctl_);
    return v;
  }

  void enter_long_mode(Vcpu& v) { v.setup_long_mode(boot::setup_long_mode(*mem_, kCodeAddr, 0)); }

  // A started vCPU whose guest writes 7 to port 0x88, where `dev` is, and is done.
  std::unique_ptr<Vcpu> start_writing_port_0x88(BusDevice& dev) {
    pio_.add(0x88, 1, &dev);
    auto v = make_vcpu(0, 1, std::vector<uint8_t>{0xb0, 0x07, 0xe6, 0x88} + kDone);  // mov al, 7; out 0x88, al
    enter_long_mode(*v);
    v->start();
    return v;
  }

  // The guest kernel code is slow on a paravirtual KVM: allow a generous deadline.
  bool wait_for_exit(std::chrono::seconds limit = std::chrono::seconds(60)) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (!ctl_.requested()) {
      if (std::chrono::steady_clock::now() > end) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  }

  std::unique_ptr<Kvm> kvm_;
  std::unique_ptr<Vm> vm_;
  std::unique_ptr<GuestMemory> mem_;
  Bus pio_{"pio"}, mmio_{"mmio"};
  ExitControl ctl_;
  Recorder ports_, uart_, mmio_dev_;
};

TEST_F(VcpuTest, LongModeGuestDoesPortIoMmioAndStringIo) {
  const std::vector<uint8_t> code = std::vector<uint8_t>{
      0xb0, 0x42,                          // mov al, 0x42
      0xe6, 0x80,                          // out 0x80, al
      0xbb, 0x00, 0x00, 0x00, 0xd0,        // mov ebx, 0xd0000000
      0xc7, 0x03, 0x78, 0x56, 0x34, 0x12,  // mov dword [rbx], 0x12345678
      0x8b, 0x43, 0x04,                    // mov eax, [rbx+4]
      0xe7, 0x84,                          // out 0x84, eax
      0xbe, 0x00, 0x10, 0x10, 0x00,        // mov esi, 0x101000
      0xb9, 0x05, 0x00, 0x00, 0x00,        // mov ecx, 5
      0x66, 0xba, 0xf8, 0x03,              // mov dx, 0x3f8
      0xf3, 0x6e,                          // rep outsb
      0xbf, 0x00, 0x11, 0x10, 0x00,        // mov edi, 0x101100
      0xb9, 0x04, 0x00, 0x00, 0x00,        // mov ecx, 4
      0xf3, 0x6c,                          // rep insb
  } + kDone;
  const char hello[] = "hello";
  mem_->write(kDataAddr, std::span(reinterpret_cast<const uint8_t*>(hello), 5));
  mmio_dev_.next = 0x10;
  auto v = make_vcpu(0, 1, code);
  enter_long_mode(*v);
  v->start();
  ASSERT_TRUE(wait_for_exit()) << "guest did not finish";
  v->stop();
  ASSERT_EQ(ctl_.reason(), ExitReason::PowerOff) << ctl_.detail();

  // out 0x80 (offset 0), out 0x84 dword (offset 4), done (offset 6).
  ASSERT_EQ(ports_.writes.size(), 3u);
  EXPECT_EQ(ports_.writes[0].offset, 0u);
  EXPECT_EQ(ports_.writes[0].data, std::vector<uint8_t>{0x42});
  EXPECT_EQ(ports_.writes[1].offset, 4u);
  EXPECT_EQ(ports_.writes[1].data, (std::vector<uint8_t>{0x10, 0x11, 0x12, 0x13}));  // what the MMIO read gave
  // MMIO: one 4-byte write at offset 0, one 4-byte read at offset 4.
  ASSERT_EQ(mmio_dev_.writes.size(), 1u);
  EXPECT_EQ(mmio_dev_.writes[0].offset, 0u);
  EXPECT_EQ(mmio_dev_.writes[0].data, (std::vector<uint8_t>{0x78, 0x56, 0x34, 0x12}));
  EXPECT_EQ(mmio_dev_.read_offsets, std::vector<uint64_t>{4});
  // rep outsb: five single bytes to the port, in order.
  std::string out;
  for (const auto& w : uart_.writes) {
    EXPECT_EQ(w.offset, 0u);
    EXPECT_EQ(w.data.size(), 1u);
    out.append(w.data.begin(), w.data.end());
  }
  EXPECT_EQ(out, "hello");
  // rep insb: four bytes from the port into guest memory.
  std::array<uint8_t, 5> in{};
  mem_->read(kInAddr, in);
  EXPECT_EQ(std::string(in.begin(), in.begin() + 4), "abcd");
  EXPECT_EQ(in[4], 0);
  auto s = v->stats();
  EXPECT_GE(s.io, 4u);   // at least: out, out, outs, ins, done (string I/O may come in one exit)
  EXPECT_LE(s.io, 12u);  // and never more than one per element
  EXPECT_EQ(s.mmio, 2u);
}

TEST_F(VcpuTest, TripleFaultStopsTheMachine) {
  auto v = make_vcpu(0, 1, {0x0f, 0x0b});  // ud2 with no IDT: #UD -> #GP -> #DF -> shutdown
  enter_long_mode(*v);
  v->start();
  ASSERT_TRUE(wait_for_exit());
  v->stop();
  EXPECT_EQ(ctl_.reason(), ExitReason::TripleFault) << ctl_.detail();
  EXPECT_NE(ctl_.detail().find("triple fault"), std::string::npos) << ctl_.detail();
  // Where it faulted (Intel keeps the state), or why that is unknown (KVM on AMD resets the vCPU).
  EXPECT_TRUE(ctl_.detail().find(fmt::format("rip {:#x}", kCodeAddr)) != std::string::npos ||
              ctl_.detail().find("reset state") != std::string::npos)
      << ctl_.detail();
}

TEST(CpuState, NamesWhereTheGuestWas) {
  kvm_regs regs{};
  kvm_sregs sregs{};
  regs.rip = 0xffffffff81a0c3d2;
  regs.rsp = 0xffffc90000013e58;
  sregs.cr0 = 0x80050033;
  sregs.cr2 = 0xffff888200000000;
  sregs.cr3 = 0x260c000;
  sregs.cr4 = 0x3506f0;
  sregs.efer = 0xd01;
  std::string text = describe_cpu_state(regs, sregs);
  EXPECT_NE(text.find("rip 0xffffffff81a0c3d2"), std::string::npos) << text;
  EXPECT_NE(text.find("rsp 0xffffc90000013e58"), std::string::npos) << text;
  EXPECT_NE(text.find("cr2 0xffff888200000000"), std::string::npos) << text;
  EXPECT_NE(text.find("cr3 0x260c000"), std::string::npos) << text;
  EXPECT_EQ(text.find("reset state"), std::string::npos) << text;
}

TEST(CpuState, SaysWhenTheVcpuWasResetAtTheShutdown) {
  kvm_regs regs{};
  kvm_sregs sregs{};
  regs.rip = 0xfff0;
  sregs.cs.base = 0xffff0000;
  sregs.cr0 = 0x60000010;  // what KVM's reset leaves: real mode
  std::string text = describe_cpu_state(regs, sregs);
  EXPECT_NE(text.find("reset state"), std::string::npos) << text;
  EXPECT_EQ(text.find("rip"), std::string::npos) << "the reset vector is not where the guest was: " << text;
  // The same rip in protected mode is a real place, not a reset.
  sregs.cr0 = 0x80050033;
  EXPECT_NE(describe_cpu_state(regs, sregs).find("rip 0xfff0"), std::string::npos);
}

TEST_F(VcpuTest, StopKicksASpinningGuest) {
  auto v = make_vcpu(0, 1, {0xeb, 0xfe});  // jmp $
  enter_long_mode(*v);
  v->start();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto t0 = std::chrono::steady_clock::now();
  v->stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  EXPECT_FALSE(ctl_.requested());
  v->stop();  // idempotent
}

TEST_F(VcpuTest, PauseStopsTheGuestAndResumeContinuesIt) {
  // inc qword [kDataAddr]; jmp back
  auto v = make_vcpu(0, 1, {0x48, 0xff, 0x04, 0x25, 0x00, 0x10, 0x10, 0x00, 0xeb, 0xf6});
  enter_long_mode(*v);
  auto count = [&] {
    uint8_t b[8];
    mem_->read(kDataAddr, b);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | b[i];
    return n;
  };
  v->start();
  auto until_moving = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (count() == 0 && std::chrono::steady_clock::now() < until_moving)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_GT(count(), 0u) << "the guest loop never ran";
  v->pause();
  uint64_t paused_at = count();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(count(), paused_at) << "the guest ran while paused";
  v->pause();  // idempotent
  v->resume();
  while (count() == paused_at && std::chrono::steady_clock::now() < until_moving)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_GT(count(), paused_at) << "the guest did not run after resume";
  v->pause();
  auto t0 = std::chrono::steady_clock::now();
  v->stop();  // a parked vCPU stops too
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  EXPECT_FALSE(ctl_.requested()) << ctl_.detail();
}

// A port whose write waits until opened, giving way to a pause of its vCPU as a passthrough device's bus
// master enable does while guest RAM is mapped for DMA (bus/give_way.h).
struct Gate : BusDevice {
  std::mutex lock;
  std::condition_variable_any changed;
  bool open = false, waiting = false;
  int deferred = 0;
  std::vector<uint8_t> written;
  void read(uint64_t, std::span<uint8_t> data) override { std::fill(data.begin(), data.end(), 0); }
  void write(uint64_t, std::span<const uint8_t> data) override {
    std::unique_lock g(lock);
    const GiveWay* give_way = GiveWay::current();
    waiting = true;
    changed.notify_all();
    bool opened = changed.wait(g, give_way ? give_way->token() : std::stop_token{}, [&] { return open; });
    waiting = false;
    if (!opened) {
      deferred++;
      throw AccessDeferred{};
    }
    written.insert(written.end(), data.begin(), data.end());
  }
  bool wait_until_waiting(std::chrono::seconds limit) {
    std::unique_lock g(lock);
    return changed.wait_for(g, limit, [&] { return waiting; });
  }
  void let_through() {
    {
      std::lock_guard g(lock);
      open = true;
    }
    changed.notify_all();
  }
};

TEST_F(VcpuTest, APauseEndsADeviceWaitAndTheAccessIsMadeAgainAfterIt) {
  Gate gate;
  auto v = start_writing_port_0x88(gate);
  ASSERT_TRUE(gate.wait_until_waiting(std::chrono::seconds(60))) << "the guest's write never came";
  auto paused = std::async(std::launch::async, [&] { v->pause(); });
  const bool prompt = paused.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  if (!prompt) gate.let_through();  // so that the test ends
  ASSERT_TRUE(prompt) << "the pause waited for the device";
  {
    std::lock_guard g(gate.lock);
    EXPECT_EQ(gate.deferred, 1);
    EXPECT_TRUE(gate.written.empty()) << "the deferred write went through";
  }
  v->resume();
  const bool again = gate.wait_until_waiting(std::chrono::seconds(30));
  gate.let_through();
  EXPECT_TRUE(again) << "the write was not made again after the pause";
  ASSERT_TRUE(wait_for_exit()) << "the guest did not go on";
  v->stop();
  EXPECT_EQ(ctl_.reason(), ExitReason::PowerOff) << ctl_.detail();
  EXPECT_EQ(gate.written, std::vector<uint8_t>{7}) << "the write arrived once";
}

// A port whose write first runs its own code for a while (the kick lands there and is spent), then
// blocks in a read that only a signal ends: as a write of guest output to a terminal nobody reads.
struct SlowThenBlocked : BusDevice {
  int pipe_fds[2] = {-1, -1};
  std::atomic<bool> entered{false}, pausing{false};
  std::atomic<int> interrupted{0};
  SlowThenBlocked() { EXPECT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0); }
  ~SlowThenBlocked() override {
    close(pipe_fds[0]);
    close(pipe_fds[1]);
  }
  void read(uint64_t, std::span<uint8_t> data) override { std::fill(data.begin(), data.end(), 0); }
  void write(uint64_t, std::span<const uint8_t>) override {
    if (entered.exchange(true)) return;  // only the first write blocks
    while (!pausing) {  // until the test is about to pause, and then on well past its kick
    }
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
    while (std::chrono::steady_clock::now() < until) {
    }
    char c;
    if (::read(pipe_fds[0], &c, 1) < 0 && errno == EINTR) interrupted++;
  }
};

TEST_F(VcpuTest, AKickSpentBeforeAHandlerBlocksIsSentAgain) {
  SlowThenBlocked dev;
  auto v = start_writing_port_0x88(dev);
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!dev.entered && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(dev.entered) << "the guest's write never came";
  auto paused = std::async(std::launch::async, [&] {
    dev.pausing = true;
    v->pause();  // kicks while the handler spins
  });
  const bool prompt = paused.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  if (!prompt) {
    ASSERT_EQ(::write(dev.pipe_fds[1], "x", 1), 1);  // so that the test ends
  }
  ASSERT_TRUE(prompt) << "pause() waited on a handler blocked after its kick";
  EXPECT_EQ(dev.interrupted, 1);
  v->resume();
  v->stop();
}

TEST_F(VcpuTest, ApWaitsForSipiAndStops) {
  auto bsp = make_vcpu(0, 2, kDone);
  auto ap = std::make_unique<Vcpu>(*vm_, 1, 2, pio_, mmio_, ctl_);
  kvm_mp_state mp{};
  ASSERT_EQ(ioctl(ap->fd(), KVM_GET_MP_STATE, &mp), 0);
  EXPECT_EQ(mp.mp_state, static_cast<uint32_t>(KVM_MP_STATE_UNINITIALIZED));
  enter_long_mode(*bsp);
  bsp->start();
  ap->start();
  ASSERT_TRUE(wait_for_exit());
  bsp->stop();
  ap->stop();
  EXPECT_EQ(ctl_.reason(), ExitReason::PowerOff) << ctl_.detail();
  EXPECT_EQ(ap->stats().io, 0u);
  EXPECT_EQ(ap->stats().mmio, 0u);
}

// The CPUID KVM holds for a vCPU (KVM_GET_CPUID2); empty, with a test failure, when KVM does not say.
std::vector<kvm_cpuid_entry2> cpuid_of(const Vcpu& v) {
  kvm_uapi::Cpuid2Header header{256, 0};
  std::vector<uint8_t> buf(sizeof header + 256 * sizeof(kvm_cpuid_entry2));
  std::memcpy(buf.data(), &header, sizeof header);
  if (ioctl(v.fd(), kvm_uapi::kGetCpuid2, buf.data()) != 0) {
    ADD_FAILURE() << "KVM_GET_CPUID2: " << strerror(errno);
    return {};
  }
  return cpuid_entries(buf);
}

TEST_F(VcpuTest, PerVcpuCpuidAndLapicWiring) {
  auto v = make_vcpu(1, 2, kDone);
  bool seen = false;
  for (const auto& e : cpuid_of(*v)) {
    if (e.function == 1) {
      seen = true;
      EXPECT_EQ(e.ebx >> 24, 1u);
      EXPECT_TRUE(e.ecx & (1u << 31));
    }
  }
  EXPECT_TRUE(seen);
  kvm_lapic_state lapic{};
  ASSERT_EQ(ioctl(v->fd(), KVM_GET_LAPIC, &lapic), 0);
  uint32_t lint0 = 0, lint1 = 0;
  std::memcpy(&lint0, lapic.regs + 0x350, 4);
  std::memcpy(&lint1, lapic.regs + 0x360, 4);
  EXPECT_EQ((lint0 >> 8) & 7, 7u);  // ExtINT
  EXPECT_EQ((lint1 >> 8) & 7, 4u);  // NMI
  kvm_fpu fpu{};
  ASSERT_EQ(ioctl(v->fd(), KVM_GET_FPU, &fpu), 0);
  EXPECT_EQ(fpu.fcw, 0x37f);
  // MXCSR as the guest will see it: from the XSAVE image (KVM_GET_FPU does not report it on every host).
  kvm_uapi::Xsave xs{};
  ASSERT_EQ(ioctl(v->fd(), kvm_uapi::kGetXsave, &xs), 0);
  EXPECT_EQ(xs.region[24 / 4], 0x1f80u);
}

// A VM without nested guests shows no VMX or SVM, whatever KVM offers (cpus.nested: false).
TEST_F(VcpuTest, NoNestedHidesVmxAndSvm) {
  vm_->set_nested(false);
  auto v = make_vcpu(0, 1, kDone);
  int seen = 0;
  for (const auto& e : cpuid_of(*v)) {
    if (e.function == 1) {
      seen++;
      EXPECT_EQ(e.ecx & (1u << 5), 0u) << "VMX shown";
    }
    if (e.function == 0x80000001) {
      seen++;
      EXPECT_EQ(e.ecx & (1u << 2), 0u) << "SVM shown";
    }
  }
  EXPECT_EQ(seen, 2);
}

TEST_F(VcpuTest, IoeventfdWriteDoesNotExit) {
  int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  vm_->add_ioeventfd(efd, 0x81, 1, true);
  auto v = make_vcpu(0, 1, std::vector<uint8_t>{0xb0, 0x07, 0xe6, 0x81} + kDone);  // mov al,7; out 0x81,al
  enter_long_mode(*v);
  v->start();
  ASSERT_TRUE(wait_for_exit());
  v->stop();
  uint64_t count = 0;
  EXPECT_EQ(read(efd, &count, 8), 8);
  EXPECT_EQ(count, 1u);
  for (const auto& w : ports_.writes) EXPECT_NE(w.offset, 1u) << "port 0x81 reached passvm";
  vm_->remove_ioeventfd(efd, 0x81, 1, true);
  close(efd);
}

// mov al,1; out 0x81,al; mov al,2; out 0x81,al; mov al,3; out 0x81,al
const std::vector<uint8_t> kThreeWritesTo81 = {0xb0, 0x01, 0xe6, 0x81, 0xb0, 0x02, 0xe6, 0x81, 0xb0, 0x03, 0xe6, 0x81};

TEST_F(VcpuTest, CoalescedPortWritesArriveInOrderBeforeTheNextExit) {
  auto v = make_vcpu(0, 1, kThreeWritesTo81 + std::vector<uint8_t>{0xb0, 0x42, 0xe6, 0x82} + kDone);
  if (!vm_->coalesce_pio(0x81, 1, true)) GTEST_SKIP() << "this KVM cannot coalesce port writes";
  enter_long_mode(*v);
  v->start();
  ASSERT_TRUE(wait_for_exit());
  v->stop();
  ASSERT_EQ(ctl_.reason(), ExitReason::PowerOff) << ctl_.detail();
  std::vector<std::pair<uint64_t, uint8_t>> seen;
  for (const auto& w : ports_.writes) seen.emplace_back(w.offset, w.data.at(0));
  // The queued writes reach the device first, then the write that exited, then "done".
  std::vector<std::pair<uint64_t, uint8_t>> want = {{1, 1}, {1, 2}, {1, 3}, {2, 0x42}, {6, 1}};
  EXPECT_EQ(seen, want);
  EXPECT_LE(v->stats().io, 2u) << "the writes to port 0x81 exited";
}

TEST_F(VcpuTest, CoalescedWritesOfASpinningGuestAreDrainedFromOutside) {
  auto v = make_vcpu(0, 1, kThreeWritesTo81 + std::vector<uint8_t>{0xeb, 0xfe});  // then jmp $
  if (!vm_->coalesce_pio(0x81, 1, true)) GTEST_SKIP() << "this KVM cannot coalesce port writes";
  enter_long_mode(*v);
  v->start();
  size_t got = 0;
  for (int i = 0; i < 6000 && got < 3; i++) {  // the guest never exits again: only this drain delivers
    vm_->drain_coalesced(pio_, mmio_);
    std::lock_guard g(ports_.lock);
    got = ports_.writes.size();
    if (got < 3) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  v->stop();
  ASSERT_EQ(ports_.writes.size(), 3u);
  for (uint8_t i = 0; i < 3; i++) EXPECT_EQ(ports_.writes[i].data.at(0), i + 1);
  // Unregistered, the same writes exit again.
  EXPECT_TRUE(vm_->coalesce_pio(0x81, 1, false));
}

// The guest loads an IDT with a handler for one vector, routes IOAPIC pin 16 to vector 0x31 (level),
// enables its LAPIC, says "ready" on port 0x83 and halts with interrupts on. The test then raises the
// interrupt; the handler EOIs and says "done" on port 0x86 with its vector. A wrong vector finds no gate
// and triple-faults; no interrupt leaves the guest halted.
enum class Delivery { Irqfd, SignalMsi, IntxResample };

class InterruptTest : public VcpuTest, public ::testing::WithParamInterface<Delivery> {};

std::string delivery_name(const ::testing::TestParamInfo<Delivery>& p) {
  switch (p.param) {
    case Delivery::Irqfd: return "MsiIrqfd";
    case Delivery::SignalMsi: return "SignalMsi";
    case Delivery::IntxResample: return "IntxIrqfdWithResample";
  }
  return "unknown";
}

TEST_P(InterruptTest, ReachesTheGuestHandler) {
  const Delivery how = GetParam();
  const uint8_t vector = how == Delivery::IntxResample ? 0x31 : 0x30;
  const uint32_t intx_gsi = 16;
  constexpr uint64_t kHandler = kCodeAddr + 0x800, kIdt = 0x102000, kIdtr = 0x103000;
  const std::vector<uint8_t> main_code = {
      0x0f, 0x01, 0x1c, 0x25, 0x00, 0x30, 0x10, 0x00,  // lidt [0x103000]
      0xbb, 0x00, 0x00, 0xc0, 0xfe,                    // mov ebx, 0xfec00000 (IOAPIC)
      0xc7, 0x03, 0x30, 0x00, 0x00, 0x00,              // IOREGSEL = 0x30: pin 16, low half
      0xc7, 0x43, 0x10, 0x31, 0x80, 0x00, 0x00,        // IOWIN = vector 0x31, level, unmasked
      0xc7, 0x03, 0x31, 0x00, 0x00, 0x00,              // IOREGSEL = 0x31: high half
      0xc7, 0x43, 0x10, 0x00, 0x00, 0x00, 0x00,        // IOWIN = destination APIC 0
      0xbb, 0xf0, 0x00, 0xe0, 0xfe,                    // mov ebx, 0xfee000f0 (LAPIC SVR)
      0xc7, 0x03, 0xff, 0x01, 0x00, 0x00,              // APIC on, spurious vector 0xff
      0xfb,                                            // sti
      0xb0, 0x55, 0xe6, 0x83,                          // mov al, 0x55; out 0x83, al
      0xf4, 0xeb, 0xfd,                                // hlt; jmp hlt
  };
  const std::vector<uint8_t> handler = {
      0xbb, 0xb0, 0x00, 0xe0, 0xfe,        // mov ebx, 0xfee000b0 (LAPIC EOI)
      0xc7, 0x03, 0x00, 0x00, 0x00, 0x00,  // EOI
      0xb0, vector, 0xe6, 0x86,            // mov al, vector; out 0x86, al
      0xf4, 0xeb, 0xfd,                    // hlt; jmp hlt
  };
  mem_->write(kHandler, handler);
  std::array<uint8_t, 16> gate{};
  gate[0] = kHandler & 0xff;
  gate[1] = (kHandler >> 8) & 0xff;
  gate[2] = boot::kBootCs;
  gate[5] = 0x8e;  // present, DPL 0, 64-bit interrupt gate
  gate[6] = (kHandler >> 16) & 0xff;
  gate[7] = (kHandler >> 24) & 0xff;
  mem_->write(kIdt + vector * 16u, gate);
  std::array<uint8_t, 10> idtr{0xff, 0x0f, 0x00, 0x20, 0x10, 0x00};  // limit 0xfff, base 0x102000
  mem_->write(kIdtr, idtr);

  int efd = eventfd(0, EFD_CLOEXEC);
  int rfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  uint32_t gsi = vm_->alloc_msi_route(0xfee00000, 0x30);  // APIC 0, fixed, edge, vector 0x30
  if (how == Delivery::Irqfd) vm_->add_irqfd(efd, gsi);
  if (how == Delivery::IntxResample) vm_->add_irqfd(efd, intx_gsi, rfd);
  auto v = make_vcpu(0, 1, main_code);
  enter_long_mode(*v);
  v->start();
  auto ready = [&] {
    std::lock_guard g(ports_.lock);
    for (const auto& w : ports_.writes)
      if (w.offset == 3) return true;
    return false;
  };
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!ready() && !ctl_.requested() && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(ready()) << "guest never got ready: " << ctl_.detail();
  if (how == Delivery::SignalMsi) {
    EXPECT_TRUE(vm_->signal_msi(0xfee00000, 0x30));
  } else {
    uint64_t one = 1;
    ASSERT_EQ(write(efd, &one, 8), 8);
  }
  ASSERT_TRUE(wait_for_exit(std::chrono::seconds(30))) << "interrupt never arrived";
  v->stop();
  EXPECT_EQ(ctl_.reason(), ExitReason::PowerOff) << ctl_.detail();
  ASSERT_FALSE(ports_.writes.empty());
  EXPECT_EQ(ports_.writes.back().offset, 6u);
  EXPECT_EQ(ports_.writes.back().data, std::vector<uint8_t>{vector});
  if (how == Delivery::IntxResample) {
    // The guest's EOI of the level-triggered pin came back as a resample event.
    uint64_t count = 0;
    EXPECT_EQ(read(rfd, &count, 8), 8) << "no resample after EOI";
    EXPECT_EQ(count, 1u);
    vm_->remove_irqfd(efd, intx_gsi);
  }
  if (how == Delivery::Irqfd) vm_->remove_irqfd(efd, gsi);
  vm_->free_msi_route(gsi);
  close(efd);
  close(rfd);
}

INSTANTIATE_TEST_SUITE_P(Delivery, InterruptTest,
                         ::testing::Values(Delivery::Irqfd, Delivery::SignalMsi, Delivery::IntxResample),
                         delivery_name);

TEST_F(VcpuTest, UnhandledExitIsAnInternalErrorWithRip) {
  // Single-stepping makes KVM exit with KVM_EXIT_DEBUG, which passvm never asks for in normal runs.
  auto v = make_vcpu(0, 1, kDone);
  enter_long_mode(*v);
  kvm_guest_debug dbg{};
  dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
  if (ioctl(v->fd(), KVM_SET_GUEST_DEBUG, &dbg) != 0) GTEST_SKIP() << "no guest debug on this KVM";
  setenv("PASSVM_DUMP_REGS", "1", 1);
  v->start();
  bool exited = wait_for_exit();
  unsetenv("PASSVM_DUMP_REGS");
  v->stop();
  ASSERT_TRUE(exited);
  EXPECT_EQ(ctl_.reason(), ExitReason::InternalError);
  const std::string d = ctl_.detail();
  EXPECT_NE(d.find("unhandled KVM exit reason 4"), std::string::npos) << d;
  EXPECT_NE(d.find("at rip 0x10"), std::string::npos) << d;
  EXPECT_NE(d.find("vCPU 0 registers:"), std::string::npos) << d;  // PASSVM_DUMP_REGS appended the dump
}

TEST_F(VcpuTest, MiscEnableHasFastStrings) {
  auto v = make_vcpu(0, 1, kDone);
  kvm_uapi::Msrs msrs{};
  msrs.nmsrs = 1;
  msrs.entries[0].index = Vcpu::kMsrMiscEnable;
  ASSERT_EQ(ioctl(v->fd(), kvm_uapi::kGetMsrs, &msrs), 1);
  EXPECT_TRUE(msrs.entries[0].data & Vcpu::kMiscEnableFastString);
}

uint64_t read_msr(int fd, uint32_t index) {
  kvm_uapi::Msrs msrs{};
  msrs.nmsrs = 1;
  msrs.entries[0].index = index;
  EXPECT_EQ(ioctl(fd, kvm_uapi::kGetMsrs, &msrs), 1) << std::hex << index;
  return msrs.entries[0].data;
}

TEST_F(VcpuTest, MtrrsEnabledWriteBackWithUncacheableHoles) {
  auto v = make_vcpu(0, 1, kDone);
  uint64_t def = read_msr(v->fd(), Vcpu::kMsrMtrrDefType);
  EXPECT_EQ(def & 0xff, Vcpu::kMtrrWriteBack);
  EXPECT_TRUE(def & Vcpu::kMtrrEnable);
  uint64_t base0 = read_msr(v->fd(), Vcpu::kMsrMtrrPhysBase0);
  uint64_t mask0 = read_msr(v->fd(), Vcpu::kMsrMtrrPhysBase0 + 1);
  EXPECT_EQ(base0 & ~0xfffull, layout::kMmio32Start);
  EXPECT_EQ(base0 & 0xff, Vcpu::kMtrrUncacheable);
  EXPECT_TRUE(mask0 & Vcpu::kMtrrValid);
  // The range covers exactly 3 GiB..4 GiB: an address matches when (addr & mask) == base.
  uint64_t m = mask0 & ~0xfffull;
  EXPECT_EQ((layout::kIoapicAddr & m), base0 & ~0xfffull);
  EXPECT_NE(((layout::kMmio32Start - 1) & m), base0 & ~0xfffull);
  EXPECT_NE((layout::kHighRamStart & m), base0 & ~0xfffull);
}

TEST_F(VcpuTest, RejectsBadVcpuCounts) {
  EXPECT_THROW(Vcpu(*vm_, 0, 0, pio_, mmio_, ctl_), std::runtime_error);
  EXPECT_THROW(Vcpu(*vm_, 0, kvm_->max_vcpus() + 1, pio_, mmio_, ctl_), std::runtime_error);
  EXPECT_THROW(Vcpu(*vm_, 3, 2, pio_, mmio_, ctl_), std::invalid_argument);
}

TEST_F(VcpuTest, DumpRegistersShowsEntryState) {
  auto v = make_vcpu(0, 1, kDone);
  enter_long_mode(*v);
  std::string dump = v->dump_registers();
  EXPECT_NE(dump.find("rip=0x0000000000100000"), std::string::npos) << dump;
  EXPECT_NE(dump.find("cs  sel=0x0010"), std::string::npos) << dump;
  EXPECT_NE(dump.find("efer=0x500"), std::string::npos) << dump;
}

}  // namespace
}  // namespace passvm
