// kvm/vcpu.h: one vCPU and the thread that runs it.
//
// Each Vcpu owns a KVM vCPU fd, its mmap'ed kvm_run page and one thread that
// loops on KVM_RUN, dispatching port I/O and MMIO exits to the two Buses
// (after the writes KVM coalesced since the last exit, see Vm::coalesce_pio).
// Everything else the guest does (interrupt controllers, timers, halts) stays
// inside KVM. Why the machine stops goes to ExitControl: a triple fault, a
// KVM internal error or a failing device ends the run loop of that vCPU and
// asks the machine to stop; the machine then stop()s every vCPU.
//
// vCPU 0 is the bootstrap processor. The others start in KVM's "wait for
// SIPI" state: they sit in KVM_RUN until the guest's BSP wakes them with
// INIT/SIPI through the in-kernel LAPIC, exactly like real hardware.
//
// stop() kicks the thread out of KVM_RUN with a signal (kick_signal(),
// installed once without SA_RESTART; do not use it for anything else) and
// kvm_run->immediate_exit (which covers a kick that lands just before
// KVM_RUN), then joins it. pause() uses the same kick but parks the thread
// on a condition variable instead of ending it; a device handler this thread
// is waiting in gives way first (bus/give_way.h), and its access is made
// again after resume().
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <csignal>
#include <cstdint>
#include <string>
#include <thread>

#include <linux/kvm.h>

#include "boot/linux_boot.h"
#include "boot/long_mode.h"
#include "bus/bus.h"
#include "bus/give_way.h"
#include "kvm/exit_sites.h"
#include "kvm/vm.h"
#include "memory/layout.h"
#include "vmm/exit_control.h"

namespace passvm {

// Exits seen by one vCPU, for the stats report. Readable at any time; exact after stop().
struct VcpuExitStats {
  uint64_t io = 0;     // KVM_EXIT_IO (one per exit, a rep-string exit counts once)
  uint64_t mmio = 0;   // KVM_EXIT_MMIO
  uint64_t other = 0;  // everything else, signals (EINTR) included
};

// A vCPU's registers for an exit report: where it was (rip, rsp), its mode and paging (cr0, cr3, cr4,
// efer) and the last page fault's address (cr2). A vCPU in its reset state (rip 0xfff0 with cs at
// 0xffff0000: how KVM on AMD leaves a vCPU after a triple fault, as it resets it at the shutdown) says
// so instead, since those registers then say nothing of where the guest was.
std::string describe_cpu_state(const kvm_regs& regs, const kvm_sregs& sregs);

class Vcpu {
 public:
  // Creates vCPU `index` of `count` (APIC id = index) with per-vCPU CPUID, an initialised FPU, and the
  // LAPIC's LINT0 = ExtINT (the PIC) and LINT1 = NMI, as a BIOS leaves them. Must be called before
  // start() of any vCPU. Throws std::runtime_error with a user-facing message.
  // `windows`: the machine's PCI windows, which the MTRRs mark uncacheable.
  Vcpu(Vm& vm, uint32_t index, uint32_t count, Bus& pio, Bus& mmio, ExitControl& ctl,
       const layout::PciWindows& windows = {});
  ~Vcpu();  // stop()s if still running
  Vcpu(const Vcpu&) = delete;
  Vcpu& operator=(const Vcpu&) = delete;

  // MSR_IA32_MISC_ENABLE as passvm sets it: fast strings on, as firmware leaves it.
  static constexpr uint32_t kMsrMiscEnable = 0x1a0;
  static constexpr uint64_t kMiscEnableFastString = 1;
  static constexpr uint32_t kMsrTsc = 0x10;
  static constexpr uint32_t kMsrMtrrPhysBase0 = 0x200;  // PhysMask0 = 0x201, then base/mask pairs
  static constexpr uint32_t kMsrMtrrDefType = 0x2ff;
  static constexpr uint64_t kMtrrUncacheable = 0, kMtrrWriteBack = 6;
  static constexpr uint64_t kMtrrValid = 1u << 11, kMtrrEnable = 1u << 11, kMtrrFixedEnable = 1u << 10;
  static constexpr uint32_t kLeaf1EcxTscDeadline = 1u << 24;

  // Registers and special registers for a 64-bit entry (from boot::setup_long_mode). Before start().
  void setup_long_mode(const boot::LongModeEntry& entry);
  // The Linux 64-bit entry: rip = kernel + 0x200, rsi = zero page. Call on vCPU 0 only.
  void setup_linux_boot(const boot::LinuxBoot& boot) { setup_long_mode(boot.entry); }

  // Starts the run thread. stop() kicks it out of KVM_RUN and joins it; both are idempotent. stop() from
  // the vCPU's own thread (a device handler) only asks the loop to end; the owner still has to stop().
  void start();
  void stop();
  // The kick alone, without waiting: a machine kicks every vCPU first and then stops (joins) each, so
  // that they leave KVM_RUN in parallel rather than one after the other.
  void kick();
  // pause() returns once the thread is out of KVM_RUN and waiting (or has ended); resume() lets it
  // run again. An exit already handled completes (KVM finishes the instruction) on the first KVM_RUN
  // after resume, so nothing is lost. Only from threads other than this vCPU's; idempotent.
  void pause();
  void resume();

  uint32_t index() const { return index_; }
  int fd() const { return fd_; }
  VcpuExitStats stats() const;
  // Port I/O and MMIO exits by address.
  const ExitSites& exit_sites() const { return sites_; }

  // General, segment and control registers as text. Only while the vCPU is not in KVM_RUN (before
  // start(), after stop(), or from its own thread). The run loop appends it to an internal error's or
  // a triple fault's detail when the environment variable PASSVM_DUMP_REGS is set (to anything but "0").
  std::string dump_registers() const;

  static int kick_signal();

 private:
  void run_loop();
  // Handles the exit in kvm_run; returns false when this vCPU must stop running.
  bool handle_exit();
  void handle_io();
  void handle_mmio();
  bool fail(std::string detail);
  std::string with_dump(std::string detail) const;  // detail, then dump_registers() under PASSVM_DUMP_REGS
  uint64_t last_rip() const;  // for exit reports; 0 if the registers cannot be read
  std::string cpu_state() const;  // describe_cpu_state of this vCPU, for exit reports
  void init_cpuid(uint32_t count);
  void init_fpu();
  void init_lapic();
  void init_msrs();

  Vm& vm_;
  uint32_t index_;
  Bus& pio_;
  Bus& mmio_;
  ExitControl& ctl_;
  int fd_ = -1;
  kvm_run* run_ = nullptr;
  size_t run_size_ = 0;
  layout::PciWindows windows_;
  uint64_t phys_mask_ = 0;  // all guest physical address bits, for MTRR masks
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  // Pause: the owner sets pause_requested_, asks give_way_ and kicks; the loop parks (parked_) until it
  // is cleared. give_way_ ends a device's wait in this thread (bus/give_way.h); ask() and renew() are
  // under pause_lock_.
  void park_if_asked();
  // Runs a trapped access; an access a device deferred (AccessDeferred) runs again after the pause
  // that deferred it. False when the vCPU stops meanwhile.
  template <typename Access>
  bool dispatch(Access&& access);
  std::mutex pause_lock_;
  std::condition_variable pause_cv_;
  bool pause_requested_ = false, parked_ = false, loop_ended_ = false;
  GiveWay give_way_;
  uint32_t io_done_ = 0;  // elements of the current string I/O exit already handled (a deferral resumes there)
  std::atomic<uint64_t> io_exits_{0}, mmio_exits_{0}, other_exits_{0};
  ExitSites sites_;
};

}  // namespace passvm
