#include "confine/seccomp.h"

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <linux/vfio.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/sysinfo.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

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
    "tgkill",  // abort(), and the control thread's kicks of the vCPUs: own process only (see compile())
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
const char* const kPeerDma[] = {"ioctl"};
// madvise (kBase) to allocate, VFIO's map and unmap to pin; a pin refused for the locked-memory limit is
// reported with that limit (vfio::Container::map_dma reads it).
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
      PV_IOCTL(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO), PV_IOCTL(VFIO_DEVICE_PCI_HOT_RESET)};
  l.insert(l.end(), more.begin(), more.end());
  return l;
}

#undef PV_IOCTL

template <size_t N>
void add(std::vector<std::string>& to, const char* const (&names)[N]) {
  to.insert(to.end(), std::begin(names), std::end(names));
}

bool starts_threads(ThreadClass c) { return c == ThreadClass::Control || c == ThreadClass::Api; }

// ---- State set by configure() ----

SeccompMode g_mode = SeccompMode::Off;
bool g_test_violation = false;
std::atomic<bool> g_violation_requested{false};
std::array<std::vector<sock_filter>, std::size(kThreadClasses)> g_programs;
// Syscall names by number for the SIGSYS handler, which may not allocate.
constexpr int kMaxSyscall = 512;
std::array<const char*, kMaxSyscall> g_syscall_names{};
thread_local char t_thread_name[16] = "passvm";
std::atomic<int> g_terminal_fd{-1};
termios g_saved_terminal{};

size_t index_of(ThreadClass c) { return static_cast<size_t>(c); }

void write_str(const char* s) {
  if (s) [[maybe_unused]] ssize_t r = ::write(STDERR_FILENO, s, strlen(s));
}

void on_sigsys(int, siginfo_t* info, void*) {
  int nr = info->si_syscall;
  char num[16];
  int len = 0;
  for (unsigned v = static_cast<unsigned>(nr); len == 0 || v > 0; v /= 10) num[len++] = static_cast<char>('0' + v % 10);
  std::reverse(num, num + len);
  num[len] = 0;
  const char* name = nr >= 0 && nr < kMaxSyscall && g_syscall_names[static_cast<size_t>(nr)]
                         ? g_syscall_names[static_cast<size_t>(nr)]
                         : "?";
  write_str("\r\npassvm: seccomp: thread '");
  write_str(t_thread_name);
  write_str("' made a system call its filter forbids: ");
  write_str(name);
  write_str(" (");
  write_str(num);
  write_str("); passvm stops. Run with --seccomp log to see every such call without stopping, and report it.\n");
  int fd = g_terminal_fd.load();
  if (fd >= 0) ioctl(fd, TCSETS, &g_saved_terminal);
  syscall(SYS_exit_group, kExitSeccomp);
}

// libseccomp's SCMP_A0()... are C compound literals; these are the same comparisons in C++.
scmp_arg_cmp arg_eq(unsigned arg, scmp_datum_t value) { return {arg, SCMP_CMP_EQ, value, 0}; }
scmp_arg_cmp arg_masked_eq(unsigned arg, scmp_datum_t mask, scmp_datum_t value) {
  return {arg, SCMP_CMP_MASKED_EQ, mask, value};
}

std::vector<sock_filter> compile(ThreadClass c, SeccompMode mode, const std::optional<DropTarget>& drop) {
  const uint32_t deny = mode == SeccompMode::Log ? SCMP_ACT_LOG : SCMP_ACT_TRAP;
  scmp_filter_ctx ctx = seccomp_init(deny);
  if (!ctx) throw std::runtime_error("seccomp: cannot create a filter");
  struct Release {
    scmp_filter_ctx ctx;
    ~Release() { seccomp_release(ctx); }
  } release{ctx};
  auto check = [&](int rc, const std::string& what) {
    if (rc < 0)
      throw std::runtime_error(fmt::format("seccomp: {} filter: {}: {}", class_name(c), what, strerror(-rc)));
  };
  // 32-bit system calls (int 0x80) are another table: the same action as any forbidden call.
  check(seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, deny), "bad-arch action");
  // NO_NEW_PRIVS is set by enter(), so the filter's load needs no capability.
  check(seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0), "no_new_privs");

  std::vector<std::string> names = allowed_syscalls(c);
  for (const auto& n : names) {
    int nr = seccomp_syscall_resolve_name(n.c_str());
    if (nr == __NR_SCMP_ERROR) throw std::runtime_error(fmt::format("seccomp: unknown system call {}", n));
    if (n == "ioctl") {
      for (const Ioctl& io : allowed_ioctls(c))
        check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, arg_eq(1, io.request)), io.name);
    } else if (n == "tgkill") {
      check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, arg_eq(0, static_cast<scmp_datum_t>(getpid()))),
            "tgkill");
    } else if (n == "clone") {
      // Threads only: a thread shares the filter it is created under, a forked child would too, but a
      // VMM has no business forking.
      check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, arg_masked_eq(0, CLONE_THREAD, CLONE_THREAD)),
            "clone");
    } else {
      check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0), n);
    }
  }
  if (starts_threads(c)) {
    // glibc tries clone3 first, whose flags are behind a pointer no filter can read; told it is
    // missing, glibc uses clone, whose flags the rule above checks.
    check(seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0), "clone3");
  }
  if (drop) {
    check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(setresuid), 3, arg_eq(0, drop->uid),
                           arg_eq(1, drop->uid), arg_eq(2, drop->uid)),
          "setresuid");
    check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(setresgid), 3, arg_eq(0, drop->gid),
                           arg_eq(1, drop->gid), arg_eq(2, drop->gid)),
          "setresgid");
    check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(setgroups), 1, arg_eq(0, drop->groups)),
          "setgroups");
  }

  // libseccomp 2.5 exports the program to a file descriptor only.
  int fd = memfd_create("passvm-seccomp", MFD_CLOEXEC);
  if (fd < 0) throw std::runtime_error(fmt::format("seccomp: memfd_create: {}", strerror(errno)));
  std::vector<sock_filter> prog;
  int rc = seccomp_export_bpf(ctx, fd);
  off_t size = lseek(fd, 0, SEEK_END);
  if (rc == 0 && size > 0 && size % static_cast<off_t>(sizeof(sock_filter)) == 0) {
    prog.resize(static_cast<size_t>(size) / sizeof(sock_filter));
    if (pread(fd, prog.data(), static_cast<size_t>(size), 0) != size) prog.clear();
  }
  close(fd);
  if (prog.empty()) throw std::runtime_error(fmt::format("seccomp: cannot export the {} filter", class_name(c)));
  return prog;
}

}  // namespace

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
  if (text == "kill" || text == "on") return SeccompMode::Kill;
  if (text == "log") return SeccompMode::Log;
  if (text == "off") return SeccompMode::Off;
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

void configure(SeccompMode mode, std::optional<DropTarget> drop) {
  g_mode = mode;
  const char* hook = getenv("PASSVM_TEST_FORBIDDEN_SYSCALL");
  g_test_violation = hook && *hook;
  if (mode == SeccompMode::Off) return;
  // glibc's malloc reads /sys/devices/system/cpu/online the first time a process wants more than
  // eight arenas, in whichever thread that happens to be: in the lab, an API request thread, which
  // the filter then killed. Setting the limit it would compute (eight arenas a CPU) means it never
  // has to look.
  mallopt(M_ARENA_MAX, 8 * std::max(1, get_nprocs()));
  for (int nr = 0; nr < kMaxSyscall; nr++)
    g_syscall_names[static_cast<size_t>(nr)] = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
  for (ThreadClass c : kThreadClasses) g_programs[index_of(c)] = compile(c, mode, drop);
  if (isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &g_saved_terminal) == 0) g_terminal_fd = STDIN_FILENO;
  struct sigaction sa {};
  sa.sa_sigaction = on_sigsys;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSYS, &sa, nullptr) != 0)
    throw std::runtime_error(fmt::format("seccomp: cannot handle SIGSYS: {}", strerror(errno)));
}

SeccompMode mode() { return g_mode; }

void enter(ThreadClass c, std::string_view name) {
  label_thread(name.empty() ? class_name(c) : name);
  if (c != ThreadClass::Control) pthread_setname_np(pthread_self(), t_thread_name);
  if (g_mode == SeccompMode::Off) return;
  const auto& prog = g_programs[index_of(c)];
  sock_fprog fprog{static_cast<unsigned short>(prog.size()), const_cast<sock_filter*>(prog.data())};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
      syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0)
    throw std::runtime_error(
        fmt::format("seccomp: the kernel refused the {} thread's filter: {}", class_name(c), strerror(errno)));
}

void request_test_violation() {
  if (g_test_violation) g_violation_requested.store(true);
}

void label_thread(std::string_view name) {
  size_t n = std::min<size_t>(name.size(), sizeof t_thread_name - 1);
  std::memcpy(t_thread_name, name.data(), n);
  t_thread_name[n] = 0;
}

bool take_test_violation() {
  return g_violation_requested.load(std::memory_order_relaxed) && g_violation_requested.exchange(false);
}

void make_forbidden_call() {
  int fd = static_cast<int>(syscall(SYS_socket, AF_INET, SOCK_STREAM, 0));
  if (fd >= 0) close(fd);
}

}  // namespace passvm::confine
