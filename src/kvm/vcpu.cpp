#include "kvm/vcpu.h"

#include <fmt/format.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <span>
#include <stdexcept>

#include "confine/seccomp.h"
#include "kvm/cpuid.h"
#include "memory/layout.h"
#include "kvm/uapi.h"

namespace passvm {

namespace {

[[noreturn]] void fail_ioctl(uint32_t index, const char* what, int err) {
  throw std::runtime_error(fmt::format("vCPU {}: {} failed: {}", index, what, strerror(err)));
}

void on_kick(int) {}  // only there so that the signal interrupts KVM_RUN with EINTR

std::once_flag kick_installed;

void install_kick_handler() {
  std::call_once(kick_installed, [] {
    struct sigaction sa {};
    sa.sa_handler = on_kick;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    if (sigaction(Vcpu::kick_signal(), &sa, nullptr) != 0)
      throw std::runtime_error(fmt::format("cannot install the vCPU kick signal handler: {}", strerror(errno)));
  });
}

// How soon pause() and stop() kick a vCPU thread again while it has not parked or ended; doubled each
// time up to a limit, since each kick (a real-time signal) stays queued while the thread cannot take it.
constexpr auto kRekick = std::chrono::milliseconds(20);
constexpr auto kRekickMax = std::chrono::milliseconds(640);

constexpr uint32_t kLapicLvtLint0 = 0x350;
constexpr uint32_t kLapicLvtLint1 = 0x360;
constexpr uint32_t kDeliveryExtInt = 7, kDeliveryNmi = 4;

uint32_t with_delivery_mode(uint32_t lvt, uint32_t mode) { return (lvt & ~0x700u) | (mode << 8); }

const char* internal_suberror_name(uint32_t sub) {
  switch (sub) {
    case KVM_INTERNAL_ERROR_EMULATION: return "emulation failure";
    case KVM_INTERNAL_ERROR_SIMUL_EX: return "exception while delivering an exception";
    case KVM_INTERNAL_ERROR_DELIVERY_EV: return "event delivery failed";
    default: return "unknown";
  }
}

std::string segment_text(const char* name, const kvm_segment& s) {
  return fmt::format("{:<3} sel={:#06x} base={:#x} limit={:#x} type={} p={} dpl={} db={} s={} l={} g={}{}\n", name,
                     s.selector, s.base, s.limit, s.type, s.present, s.dpl, s.db, s.s, s.l, s.g,
                     s.unusable ? " unusable" : "");
}

bool dump_regs_requested() {
  const char* v = std::getenv("PASSVM_DUMP_REGS");
  return v && *v && std::strcmp(v, "0") != 0;
}

}  // namespace

int Vcpu::kick_signal() { return SIGRTMIN + 1; }

Vcpu::Vcpu(Vm& vm, uint32_t index, uint32_t count, Bus& pio, Bus& mmio, ExitControl& ctl,
           const layout::PciWindows& windows)
    : vm_(vm), index_(index), pio_(pio), mmio_(mmio), ctl_(ctl), windows_(windows) {
  phys_mask_ = (uint64_t{1} << vm.kvm().guest_phys_bits()) - 1;
  uint32_t max = vm.kvm().max_vcpus();
  if (count == 0 || count > max)
    throw std::runtime_error(fmt::format("{} vCPUs requested: this KVM allows 1 to {}", count, max));
  if (index >= count) throw std::invalid_argument(fmt::format("vCPU index {} out of range for {} vCPUs", index, count));
  fd_ = ioctl(vm.fd(), KVM_CREATE_VCPU, static_cast<unsigned long>(index));
  if (fd_ < 0) fail_ioctl(index, "KVM_CREATE_VCPU", errno);
  try {
    run_size_ = vm.kvm().vcpu_mmap_size();
    void* p = mmap(nullptr, run_size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) fail_ioctl(index, "mmap of kvm_run", errno);
    run_ = static_cast<kvm_run*>(p);
    vm.attach_coalesced_ring(fd_);
    init_cpuid(count);
    init_fpu();
    init_lapic();
    init_msrs();
  } catch (...) {
    if (run_) munmap(run_, run_size_);
    close(fd_);
    throw;
  }
}

Vcpu::~Vcpu() {
  stop();
  if (run_) munmap(run_, run_size_);
  if (fd_ >= 0) close(fd_);
}

void Vcpu::init_cpuid(uint32_t count) {
  auto entries = cpuid_entries(vm_.kvm().supported_cpuid());
  patch_cpuid(entries, index_, count);
  set_brand_string(entries, host_brand_string());
  if (!vm_.nested()) hide_virtualization(entries);
  // KVM emulates the TSC-deadline LAPIC timer but leaves it to userspace to advertise: without it Linux
  // calibrates and programs the LAPIC timer the slow way.
  if (auto* leaf1 = find_cpuid(entries, 1); leaf1 && vm_.kvm().check_extension(KVM_CAP_TSC_DEADLINE_TIMER) > 0)
    leaf1->ecx |= kLeaf1EcxTscDeadline;
  auto buf = cpuid_buffer(entries);
  if (ioctl(fd_, kvm_uapi::kSetCpuid2, buf.data()) < 0) fail_ioctl(index_, "KVM_SET_CPUID2", errno);
}

void Vcpu::init_fpu() {
  // The FNINIT and reset values: all exceptions masked, 64-bit precision, round to nearest.
  kvm_fpu fpu{};
  fpu.fcw = 0x37f;
  fpu.mxcsr = 0x1f80;
  if (ioctl(fd_, KVM_SET_FPU, &fpu) < 0) fail_ioctl(index_, "KVM_SET_FPU", errno);
  // KVM_SET_FPU ignores mxcsr on x86; it reaches the guest through the XSAVE image (legacy area offset
  // 24), which KVM only loads when the header's XSTATE_BV says SSE state is present.
  if (vm_.kvm().check_extension(KVM_CAP_XSAVE) <= 0) return;
  kvm_uapi::Xsave xs{};
  if (ioctl(fd_, kvm_uapi::kGetXsave, &xs) < 0) fail_ioctl(index_, "KVM_GET_XSAVE", errno);
  constexpr size_t kMxcsrWord = 24 / 4, kXstateBvWord = 512 / 4;
  constexpr uint32_t kXfeatureSse = 1u << 1;
  xs.region[kMxcsrWord] = fpu.mxcsr;
  xs.region[kXstateBvWord] |= kXfeatureSse;
  if (ioctl(fd_, kvm_uapi::kSetXsave, &xs) < 0) fail_ioctl(index_, "KVM_SET_XSAVE", errno);
}

void Vcpu::init_lapic() {
  // What a BIOS does for the virtual wire mode: PIC interrupts come in through LINT0, NMIs through
  // LINT1. Linux relies on it until it sets up the IOAPIC (and for the PIT timer check).
  kvm_lapic_state lapic{};
  if (ioctl(fd_, KVM_GET_LAPIC, &lapic) < 0) fail_ioctl(index_, "KVM_GET_LAPIC", errno);
  uint32_t lint0 = 0, lint1 = 0;
  std::memcpy(&lint0, lapic.regs + kLapicLvtLint0, 4);
  std::memcpy(&lint1, lapic.regs + kLapicLvtLint1, 4);
  lint0 = with_delivery_mode(lint0, kDeliveryExtInt);
  lint1 = with_delivery_mode(lint1, kDeliveryNmi);
  std::memcpy(lapic.regs + kLapicLvtLint0, &lint0, 4);
  std::memcpy(lapic.regs + kLapicLvtLint1, &lint1, 4);
  if (ioctl(fd_, KVM_SET_LAPIC, &lapic) < 0) fail_ioctl(index_, "KVM_SET_LAPIC", errno);
}

uint64_t Vcpu::last_rip() const {
  kvm_regs regs{};
  return ioctl(fd_, KVM_GET_REGS, &regs) == 0 ? regs.rip : 0;
}

std::string describe_cpu_state(const kvm_regs& regs, const kvm_sregs& sregs) {
  if (regs.rip == 0xfff0 && sregs.cs.base == 0xffff0000 && !(sregs.cr0 & 1))
    return "the vCPU is in its reset state: the host's KVM reset it at the shutdown (KVM on AMD does), so where "
           "the guest faulted is not known";
  return fmt::format("rip {:#x}, rsp {:#x}, cr0 {:#x}, cr2 {:#x}, cr3 {:#x}, cr4 {:#x}, efer {:#x}", regs.rip, regs.rsp,
                     sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer);
}

std::string Vcpu::cpu_state() const {
  kvm_regs regs{};
  kvm_sregs sregs{};
  if (ioctl(fd_, KVM_GET_REGS, &regs) != 0 || ioctl(fd_, KVM_GET_SREGS, &sregs) != 0)
    return fmt::format("its registers cannot be read: {}", strerror(errno));
  return describe_cpu_state(regs, sregs);
}

void Vcpu::init_msrs() {
  // What firmware leaves behind, and what Linux relies on:
  // - fast strings in IA32_MISC_ENABLE (Linux picks its memcpy by it);
  // - the TSC at 0 on every vCPU: KVM synchronizes TSC writes of the same value made close together, so
  //   all vCPUs share one TSC and Linux keeps it as a stable clock;
  // - MTRRs on, RAM write-back, the PCI holes uncacheable. Disabled MTRRs make everything uncacheable
  //   wherever KVM honours guest memory types (non-coherent DMA), and Linux then skips PAT setup.
  struct Msr {
    uint32_t index;
    uint64_t value;
  };
  std::vector<Msr> wanted = {{kMsrMiscEnable, kMiscEnableFastString}, {kMsrTsc, 0}};
  uint32_t mtrr = 0;
  for (layout::Window r : layout::uncacheable_ranges(windows_)) {
    wanted.push_back({kMsrMtrrPhysBase0 + 2 * mtrr, r.start | kMtrrUncacheable});
    wanted.push_back({kMsrMtrrPhysBase0 + 2 * mtrr + 1, (phys_mask_ & ~(r.size - 1)) | kMtrrValid});
    mtrr++;
  }
  wanted.push_back({kMsrMtrrDefType, kMtrrEnable | kMtrrFixedEnable | kMtrrWriteBack});
  for (const auto& m : wanted) {
    kvm_uapi::Msrs msrs{};
    msrs.nmsrs = 1;
    msrs.entries[0].index = m.index;
    msrs.entries[0].data = m.value;
    // 0: this KVM does not let userspace set that MSR; the guest runs without it.
    if (ioctl(fd_, kvm_uapi::kSetMsrs, &msrs) < 0) fail_ioctl(index_, "KVM_SET_MSRS", errno);
  }
}

void Vcpu::setup_long_mode(const boot::LongModeEntry& e) {
  kvm_sregs sregs{};
  if (ioctl(fd_, KVM_GET_SREGS, &sregs) < 0) fail_ioctl(index_, "KVM_GET_SREGS", errno);
  kvm_segment code{};
  code.base = 0;
  code.limit = 0xffffffff;
  code.selector = e.cs;
  code.type = 0xb;  // execute/read, accessed
  code.present = 1;
  code.s = 1;
  code.l = 1;
  code.g = 1;
  kvm_segment data = code;
  data.selector = e.ds;
  data.type = 0x3;  // read/write, accessed
  data.l = 0;
  data.db = 1;
  sregs.cs = code;
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
  sregs.gdt.base = e.gdt_base;
  sregs.gdt.limit = e.gdt_limit;
  sregs.idt.base = 0;
  sregs.idt.limit = 0;  // no IDT until the kernel loads one: any exception is a triple fault
  sregs.cr0 = e.cr0;
  sregs.cr3 = e.cr3;
  sregs.cr4 = e.cr4;
  sregs.efer = e.efer;
  if (ioctl(fd_, KVM_SET_SREGS, &sregs) < 0) fail_ioctl(index_, "KVM_SET_SREGS", errno);

  kvm_regs regs{};
  regs.rflags = 0x2;  // bit 1 is reserved-one; IF clear
  regs.rip = e.rip;
  regs.rsi = e.rsi;
  regs.rsp = e.rsp;
  regs.rbp = e.rsp;
  if (ioctl(fd_, KVM_SET_REGS, &regs) < 0) fail_ioctl(index_, "KVM_SET_REGS", errno);
}

void Vcpu::start() {
  if (thread_.joinable()) return;
  install_kick_handler();
  stopping_ = false;
  {
    std::lock_guard g(pause_lock_);
    loop_ended_ = false;
  }
  run_->immediate_exit = 0;
  thread_ = std::thread([this] { run_loop(); });
}

void Vcpu::kick() {
  if (!thread_.joinable()) return;
  stopping_ = true;
  if (thread_.get_id() == std::this_thread::get_id()) return;  // the loop sees stopping_ when it returns
  // immediate_exit catches a thread about to enter KVM_RUN; the signal one already inside it.
  __atomic_store_n(&run_->immediate_exit, 1, __ATOMIC_SEQ_CST);
  pthread_kill(thread_.native_handle(), kick_signal());
}

void Vcpu::pause() {
  std::unique_lock g(pause_lock_);
  if (!thread_.joinable() || thread_.get_id() == std::this_thread::get_id()) return;
  pause_requested_ = true;
  give_way_.ask();  // a device's wait in this vCPU ends, and the access is made again after the pause
  __atomic_store_n(&run_->immediate_exit, 1, __ATOMIC_SEQ_CST);
  pthread_kill(thread_.native_handle(), kick_signal());
  // A kick that came while the thread ran a handler's own code is spent before the handler blocks (a
  // write to a console nobody reads): kicked again until parked.
  for (auto wait = kRekick; !pause_cv_.wait_for(g, wait, [&] { return parked_ || loop_ended_; });
       wait = std::min(wait * 2, kRekickMax))
    pthread_kill(thread_.native_handle(), kick_signal());
}

void Vcpu::resume() {
  std::lock_guard g(pause_lock_);
  pause_requested_ = false;
  pause_cv_.notify_all();
}

void Vcpu::park_if_asked() {
  std::unique_lock g(pause_lock_);
  if (!pause_requested_) {
    if (give_way_.asked()) give_way_.renew();  // that pause ended before this thread parked for it
    return;
  }
  parked_ = true;
  pause_cv_.notify_all();
  pause_cv_.wait(g, [&] { return !pause_requested_ || stopping_.load(); });
  parked_ = false;
  give_way_.renew();
  // The kick that parked us set immediate_exit; a kick to stop sets it again after stopping_.
  if (!stopping_.load()) __atomic_store_n(&run_->immediate_exit, 0, __ATOMIC_SEQ_CST);
}

void Vcpu::stop() {
  {
    std::lock_guard g(pause_lock_);  // a parked loop must wake to see stopping_
    stopping_ = true;
    pause_cv_.notify_all();
  }
  kick();
  if (!thread_.joinable() || thread_.get_id() == std::this_thread::get_id()) return;
  {
    std::unique_lock g(pause_lock_);  // kicked again until the loop ended, as for pause()
    for (auto wait = kRekick; !pause_cv_.wait_for(g, wait, [&] { return loop_ended_; });
         wait = std::min(wait * 2, kRekickMax))
      pthread_kill(thread_.native_handle(), kick_signal());
  }
  thread_.join();
}

VcpuExitStats Vcpu::stats() const {
  return {io_exits_.load(std::memory_order_relaxed), mmio_exits_.load(std::memory_order_relaxed),
          other_exits_.load(std::memory_order_relaxed)};
}

void Vcpu::run_loop() {
  GiveWay::Installed give_way(give_way_);
  // The machine may have blocked signals in the thread that created this one; the kick must get through.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, kick_signal());
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  struct Ended {
    Vcpu& v;
    ~Ended() {
      std::lock_guard g(v.pause_lock_);
      v.loop_ended_ = true;
      v.pause_cv_.notify_all();
    }
  } ended{*this};
  try {
    // A filter the kernel refuses stops the machine with the reason, as any failure here does.
    confine::enter(confine::ThreadClass::Vcpu, fmt::format("vcpu{}", index_));
    while (!stopping_.load()) {
      park_if_asked();
      if (stopping_.load()) break;
      if (ioctl(fd_, KVM_RUN, 0) < 0) {
        int err = errno;
        if (err == EINTR || err == EAGAIN) {
          other_exits_.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        fail(fmt::format("vCPU {}: KVM_RUN failed: {}", index_, strerror(err)));
        return;
      }
      if (!handle_exit()) return;
      if (confine::take_test_violation()) confine::make_forbidden_call();
    }
  } catch (const std::exception& ex) {
    fail(fmt::format("vCPU {}: {}", index_, ex.what()));
  }
}

template <typename Access>
bool Vcpu::dispatch(Access&& access) {
  // The exit stays as KVM left it until the next KVM_RUN, so the same access can be made again.
  for (;;) {
    try {
      access();
      return true;
    } catch (const AccessDeferred&) {
      park_if_asked();
      if (stopping_.load()) return false;
    }
  }
}

std::string Vcpu::with_dump(std::string detail) const {
  if (dump_regs_requested()) {
    try {
      detail += "\n" + dump_registers();
    } catch (const std::exception&) {
    }
  }
  return detail;
}

bool Vcpu::fail(std::string detail) {
  ctl_.request(ExitReason::InternalError, with_dump(std::move(detail)));
  return false;
}

bool Vcpu::handle_exit() {
  // Writes KVM queued instead of exiting happened before this exit: deliver them first.
  vm_.drain_coalesced(pio_, mmio_);
  switch (run_->exit_reason) {
    case KVM_EXIT_IO:
      io_exits_.fetch_add(1, std::memory_order_relaxed);
      sites_.add(false, run_->io.direction == KVM_EXIT_IO_OUT, run_->io.port);
      io_done_ = 0;
      return dispatch([this] { handle_io(); });
    case KVM_EXIT_MMIO:
      mmio_exits_.fetch_add(1, std::memory_order_relaxed);
      sites_.add(true, run_->mmio.is_write != 0, run_->mmio.phys_addr);
      return dispatch([this] { handle_mmio(); });
    default:
      break;
  }
  other_exits_.fetch_add(1, std::memory_order_relaxed);
  switch (run_->exit_reason) {
    case KVM_EXIT_INTR:
    case KVM_EXIT_HLT:  // only without an in-kernel LAPIC; nothing to do but run again
    case KVM_EXIT_IRQ_WINDOW_OPEN:
      return true;
    case KVM_EXIT_SHUTDOWN:
      ctl_.request(ExitReason::TripleFault,
                   with_dump(fmt::format("vCPU {}: triple fault ({})", index_, cpu_state())));
      return false;
    case KVM_EXIT_SYSTEM_EVENT:
      switch (run_->system_event.type) {
        case KVM_SYSTEM_EVENT_SHUTDOWN:
          ctl_.request(ExitReason::PowerOff, fmt::format("vCPU {}: system event shutdown", index_));
          return false;
        case KVM_SYSTEM_EVENT_RESET:
          ctl_.request(ExitReason::Reset, fmt::format("vCPU {}: system event reset", index_));
          return false;
        default:
          return fail(fmt::format("vCPU {}: system event {} (guest crash)", index_, run_->system_event.type));
      }
    case KVM_EXIT_INTERNAL_ERROR: {
      const auto& ie = run_->internal;
      uint64_t rip = last_rip();
      std::string data;
      for (uint32_t i = 0; i < ie.ndata && i < 16; i++) data += fmt::format(" {:#x}", ie.data[i]);
      return fail(fmt::format("vCPU {}: KVM internal error, suberror {} ({}) at rip {:#x}{}{}", index_, ie.suberror,
                              internal_suberror_name(ie.suberror), rip, data.empty() ? "" : "; data:", data));
    }
    case KVM_EXIT_FAIL_ENTRY: {
      uint64_t rip = last_rip();
      return fail(fmt::format("vCPU {}: KVM could not enter the guest, hardware reason {:#x} at rip {:#x}", index_,
                              run_->fail_entry.hardware_entry_failure_reason, rip));
    }
    default: {
      uint64_t rip = last_rip();
      return fail(fmt::format("vCPU {}: unhandled KVM exit reason {} at rip {:#x}", index_, run_->exit_reason, rip));
    }
  }
}

void Vcpu::handle_io() {
  const auto& io = run_->io;
  // String I/O (rep ins/outs) hands over count elements of size bytes at data_offset in one exit.
  uint64_t bytes = static_cast<uint64_t>(io.count) * io.size;
  if (io.size == 0 || io.size > 4 || io.data_offset > run_size_ || bytes > run_size_ - io.data_offset)
    throw std::runtime_error(fmt::format("malformed I/O exit: port {:#x} size {} count {} offset {:#x}", io.port,
                                         io.size, io.count, io.data_offset));
  uint8_t* data = reinterpret_cast<uint8_t*>(run_) + io.data_offset;
  for (; io_done_ < io.count; io_done_++) {
    std::span<uint8_t> elem(data + io_done_ * io.size, io.size);
    if (io.direction == KVM_EXIT_IO_OUT)
      pio_.write(io.port, elem);
    else
      pio_.read(io.port, elem);
  }
}

void Vcpu::handle_mmio() {
  auto& m = run_->mmio;
  if (m.len == 0 || m.len > sizeof m.data)
    throw std::runtime_error(fmt::format("malformed MMIO exit: address {:#x} length {}", m.phys_addr, m.len));
  std::span<uint8_t> data(m.data, m.len);
  if (m.is_write)
    mmio_.write(m.phys_addr, data);
  else
    mmio_.read(m.phys_addr, data);
}

std::string Vcpu::dump_registers() const {
  kvm_regs r{};
  kvm_sregs s{};
  if (ioctl(fd_, KVM_GET_REGS, &r) < 0) fail_ioctl(index_, "KVM_GET_REGS", errno);
  if (ioctl(fd_, KVM_GET_SREGS, &s) < 0) fail_ioctl(index_, "KVM_GET_SREGS", errno);
  std::string out = fmt::format("vCPU {} registers:\n", index_);
  out += fmt::format("rip={:#018x} rflags={:#x}\n", r.rip, r.rflags);
  out += fmt::format("rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n", r.rax, r.rbx, r.rcx, r.rdx);
  out += fmt::format("rsi={:#018x} rdi={:#018x} rsp={:#018x} rbp={:#018x}\n", r.rsi, r.rdi, r.rsp, r.rbp);
  out += fmt::format("r8 ={:#018x} r9 ={:#018x} r10={:#018x} r11={:#018x}\n", r.r8, r.r9, r.r10, r.r11);
  out += fmt::format("r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}\n", r.r12, r.r13, r.r14, r.r15);
  out += fmt::format("cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} cr8={:#x} efer={:#x} apic_base={:#x}\n", s.cr0, s.cr2,
                     s.cr3, s.cr4, s.cr8, s.efer, s.apic_base);
  out += segment_text("cs", s.cs);
  out += segment_text("ds", s.ds);
  out += segment_text("es", s.es);
  out += segment_text("ss", s.ss);
  out += segment_text("fs", s.fs);
  out += segment_text("gs", s.gs);
  out += segment_text("tr", s.tr);
  out += fmt::format("gdt base={:#x} limit={:#x}  idt base={:#x} limit={:#x}\n", s.gdt.base, s.gdt.limit, s.idt.base,
                     s.idt.limit);
  return out;
}

}  // namespace passvm
