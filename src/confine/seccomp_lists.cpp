// The allow lists of seccomp.h, by thread class: plain data, no libseccomp (see seccomp_compile.h).
#include <linux/kvm.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <termios.h>

#include <algorithm>
#include <iterator>
#include <string>
#include <vector>

#include "confine/seccomp.h"
#include "confine/seccomp_compile.h"
#include "kvm/uapi.h"

namespace passvm::confine {
namespace {

// ---- The lists ----
// Each class's list is what its code calls, checked against src/confine/recorded/ (every call the
// class made in a traced lab run, see the README). "Why" comments name the code that needs a call
// where that is not obvious.

// Every thread: locks, memory (malloc and glibc's thread stacks), time, its own exit, messages on
// stderr, and the terminal restore the SIGSYS handler and a crash make.
const char* const kBase[] = {
    "futex", "restart_syscall", "rt_sigreturn", "rt_sigprocmask", "sched_yield", "nanosleep", "clock_nanosleep",
    "clock_gettime", "gettimeofday", "getpid", "gettid", "madvise", "mmap", "munmap", "mprotect", "mremap", "brk",
    "write", "writev", "close", "exit", "exit_group", "getrandom",
    "tgkill",  // abort(), and the control thread's kicks of the vCPUs: own process only (see seccomp_compile.cpp)
    "sigaltstack",  // a thread's signal stack goes when it exits (the sanitizers' and glibc's)
#ifdef __SANITIZE_ADDRESS__
    "pipe2",  // AddressSanitizer tests whether memory is readable by writing it to a pipe
#endif
};

// Threads that start threads (glibc's pthread_create, and what the new thread does before its own
// enter()) and confine those threads.
const char* const kStartsThreads[] = {"clone", "set_robust_list", "rseq", "prctl", "seccomp", "sched_getaffinity"};

const char* const kVcpu[] = {
    "ioctl", "read", "pread64", "pwrite64",
    "eventfd2", "epoll_ctl",  // MSI-X vectors get their eventfds when the guest unmasks them
};
const char* const kInterrupts[] = {"ioctl", "read", "epoll_wait", "epoll_pwait", "pread64", "pwrite64"};
// VFIO's map and unmap; a map refused for memory (ENOMEM, EPERM) is reported with the locked-memory limit
// (vfio::Container::map_dma reads it), for a BAR as for guest RAM.
const char* const kPeerDma[] = {"ioctl", "getrlimit", "prlimit64"};
// madvise (kBase) to allocate, VFIO's map and unmap to pin; a pin refused for the locked-memory limit is
// reported with that limit (as above).
const char* const kGuestRam[] = {"ioctl", "getrlimit", "prlimit64"};
const char* const kConsole[] = {"ioctl", "read", "poll", "ppoll"};
const char* const kSignals[] = {"read", "poll", "ppoll"};
const char* const kApi[] = {
    "accept", "accept4", "read", "recvfrom", "recvmsg", "sendto", "sendmsg", "poll", "ppoll", "select", "pselect6",
    "shutdown", "fcntl", "getsockopt", "setsockopt", "getsockname", "getpeername", "ioctl",
};
// The control thread builds and tears down machines (a VM created or rebooted through the API, a
// device hot-added) after it confined itself, so it keeps what setup needs: files (the kernel, its
// cache, sysfs, /dev/vfio), memory, eventfds; not exec, sockets, ptrace, mounts or module loading.
const char* const kControl[] = {
    "ioctl", "read", "pread64", "pwrite64", "readv", "lseek", "openat", "open", "fstat", "newfstatat", "statx",
    "stat", "lstat", "readlink", "readlinkat", "getdents64", "access", "faccessat", "faccessat2", "dup", "dup2",
    "dup3", "fcntl", "mkdir", "mkdirat", "rename", "renameat", "renameat2", "unlink", "unlinkat", "ftruncate",
    "fallocate", "fsync", "fdatasync", "utimensat", "fchmod", "chmod", "eventfd2", "epoll_create1", "epoll_ctl",
    "poll", "ppoll", "rt_sigaction", "getrlimit", "setrlimit", "prlimit64", "sysinfo", "uname",
    "getuid", "geteuid", "getgid", "getegid", "getcwd", "mlock", "munlock", "memfd_create", "shutdown",
    "sched_setaffinity", "membarrier", "wait4",
};

// ioctl request numbers. The KVM ones whose structs end in flexible arrays come from kvm/uapi.h
// (C++ gets their sizes, hence their numbers, wrong).
using IoctlList = std::vector<Ioctl>;
#define PV_IOCTL(x) Ioctl { #x, static_cast<unsigned long>(x) }

IoctlList terminal_ioctls() { return {PV_IOCTL(TCGETS), PV_IOCTL(TCSETS), PV_IOCTL(TCSETSW), PV_IOCTL(TCSETSF)}; }

// What a vCPU's exits reach: its own state, interrupts, memory slots for BARs the guest moves, and
// the passthrough device (interrupt setup, config space on older kernels, peer mappings undone
// synchronously when a BAR moves).
IoctlList vcpu_ioctls() {
  return {PV_IOCTL(KVM_RUN),
          PV_IOCTL(KVM_CHECK_EXTENSION),  // a ROM mapped read-only, coalesced MMIO for a BAR placed
          PV_IOCTL(KVM_REGISTER_COALESCED_MMIO),
          PV_IOCTL(KVM_UNREGISTER_COALESCED_MMIO),
          PV_IOCTL(KVM_GET_REGS),
          PV_IOCTL(KVM_SET_REGS),
          PV_IOCTL(KVM_GET_SREGS),
          PV_IOCTL(KVM_SET_SREGS),
          PV_IOCTL(KVM_GET_FPU),
          PV_IOCTL(KVM_GET_LAPIC),
          PV_IOCTL(KVM_GET_MP_STATE),
          PV_IOCTL(KVM_IRQ_LINE),
          PV_IOCTL(KVM_SIGNAL_MSI),
          PV_IOCTL(KVM_IRQFD),
          PV_IOCTL(KVM_IOEVENTFD),
          {"KVM_SET_GSI_ROUTING", kvm_uapi::kSetGsiRouting},
          PV_IOCTL(KVM_SET_USER_MEMORY_REGION),
          PV_IOCTL(VFIO_DEVICE_SET_IRQS),
          PV_IOCTL(VFIO_DEVICE_GET_IRQ_INFO),
          PV_IOCTL(VFIO_DEVICE_GET_REGION_INFO),
          PV_IOCTL(VFIO_DEVICE_RESET),
          PV_IOCTL(VFIO_IOMMU_MAP_DMA),
          PV_IOCTL(VFIO_IOMMU_UNMAP_DMA)};
}

IoctlList all_kvm_vfio_ioctls() {
  IoctlList l = vcpu_ioctls();
  IoctlList more = {
      PV_IOCTL(KVM_GET_API_VERSION), PV_IOCTL(KVM_CREATE_VM),
      PV_IOCTL(KVM_GET_VCPU_MMAP_SIZE), {"KVM_GET_SUPPORTED_CPUID", kvm_uapi::kGetSupportedCpuid},
      {"KVM_SET_CPUID2", kvm_uapi::kSetCpuid2}, {"KVM_SET_MSRS", kvm_uapi::kSetMsrs},
      {"KVM_GET_MSRS", kvm_uapi::kGetMsrs}, {"KVM_GET_XSAVE", kvm_uapi::kGetXsave},
      {"KVM_SET_XSAVE", kvm_uapi::kSetXsave}, PV_IOCTL(KVM_CREATE_VCPU), PV_IOCTL(KVM_CREATE_IRQCHIP),
      PV_IOCTL(KVM_CREATE_PIT2), PV_IOCTL(KVM_SET_TSS_ADDR), PV_IOCTL(KVM_SET_IDENTITY_MAP_ADDR),
      PV_IOCTL(KVM_SET_FPU), PV_IOCTL(KVM_SET_LAPIC), PV_IOCTL(KVM_SET_GUEST_DEBUG), PV_IOCTL(KVM_SET_MP_STATE),
      PV_IOCTL(VFIO_GET_API_VERSION), PV_IOCTL(VFIO_CHECK_EXTENSION), PV_IOCTL(VFIO_SET_IOMMU),
      PV_IOCTL(VFIO_IOMMU_GET_INFO), PV_IOCTL(VFIO_GROUP_GET_STATUS), PV_IOCTL(VFIO_GROUP_SET_CONTAINER),
      PV_IOCTL(VFIO_GROUP_UNSET_CONTAINER), PV_IOCTL(VFIO_GROUP_GET_DEVICE_FD), PV_IOCTL(VFIO_DEVICE_GET_INFO),
      PV_IOCTL(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO), PV_IOCTL(VFIO_DEVICE_PCI_HOT_RESET),
      PV_IOCTL(KVM_CREATE_DEVICE), PV_IOCTL(KVM_SET_DEVICE_ATTR)};
  l.insert(l.end(), more.begin(), more.end());
  return l;
}

#undef PV_IOCTL

template <size_t N>
void add(std::vector<std::string>& to, const char* const (&names)[N]) {
  to.insert(to.end(), std::begin(names), std::end(names));
}


}  // namespace

bool starts_threads(ThreadClass c) { return c == ThreadClass::Control || c == ThreadClass::Api; }

const char* class_name(ThreadClass c) {
  switch (c) {
    case ThreadClass::Control: return "control";
    case ThreadClass::Vcpu: return "vcpu";
    case ThreadClass::Interrupts: return "interrupts";
    case ThreadClass::PeerDma: return "peer-dma";
    case ThreadClass::GuestRam: return "guest-ram";
    case ThreadClass::Console: return "console";
    case ThreadClass::Signals: return "signals";
    case ThreadClass::Api: return "api";
  }
  return "?";
}

std::optional<SeccompMode> parse_mode(std::string_view text) {
  // true and false as cloud-hypervisor spells them: Kata's driver passes `--seccomp false` when told to.
  if (text == "kill" || text == "on" || text == "true") return SeccompMode::Kill;
  if (text == "log") return SeccompMode::Log;
  if (text == "off" || text == "false") return SeccompMode::Off;
  return std::nullopt;
}

std::vector<std::string> allowed_syscalls(ThreadClass c) {
  std::vector<std::string> l;
  add(l, kBase);
  if (starts_threads(c)) add(l, kStartsThreads);
  switch (c) {
    case ThreadClass::Control:
      // Every thread the control thread starts after confining itself is bound by its list too.
      add(l, kControl);
      add(l, kVcpu);
      add(l, kInterrupts);
      add(l, kPeerDma);
      add(l, kGuestRam);
      add(l, kConsole);
      add(l, kSignals);
      break;
    case ThreadClass::Vcpu: add(l, kVcpu); break;
    case ThreadClass::Interrupts: add(l, kInterrupts); break;
    case ThreadClass::PeerDma: add(l, kPeerDma); break;
    case ThreadClass::GuestRam: add(l, kGuestRam); break;
    case ThreadClass::Console: add(l, kConsole); break;
    case ThreadClass::Signals: add(l, kSignals); break;
    case ThreadClass::Api: add(l, kApi); break;
  }
  // Every class may restore the terminal (see on_sigsys), so every class has ioctl.
  if (std::find(l.begin(), l.end(), "ioctl") == l.end()) l.emplace_back("ioctl");
  std::sort(l.begin(), l.end());
  l.erase(std::unique(l.begin(), l.end()), l.end());
  return l;
}

std::vector<Ioctl> allowed_ioctls(ThreadClass c) {
  IoctlList l = terminal_ioctls();
  IoctlList more;
  switch (c) {
    case ThreadClass::Control: more = all_kvm_vfio_ioctls(); break;  // a superset of the others' (a test checks)
    case ThreadClass::Vcpu: more = vcpu_ioctls(); break;
    case ThreadClass::Interrupts:
      // INTx: unmask after the guest's EOI, assert the line when the level stays up.
      more = {{"VFIO_DEVICE_SET_IRQS", VFIO_DEVICE_SET_IRQS}, {"KVM_IRQ_LINE", KVM_IRQ_LINE},
              {"KVM_SIGNAL_MSI", KVM_SIGNAL_MSI}};
      break;
    case ThreadClass::PeerDma:
    case ThreadClass::GuestRam:
      more = {{"VFIO_IOMMU_MAP_DMA", VFIO_IOMMU_MAP_DMA}, {"VFIO_IOMMU_UNMAP_DMA", VFIO_IOMMU_UNMAP_DMA}};
      break;
    case ThreadClass::Console: more = {{"KVM_IRQ_LINE", KVM_IRQ_LINE}}; break;  // the UART's interrupt on input
    case ThreadClass::Signals: break;
    case ThreadClass::Api: more = {{"FIONBIO", FIONBIO}}; break;
  }
  l.insert(l.end(), more.begin(), more.end());
  return l;
}

}  // namespace passvm::confine
