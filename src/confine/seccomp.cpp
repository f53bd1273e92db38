#include "confine/seccomp.h"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
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
#include <limits>
#include <stdexcept>

#include <fmt/format.h>

#include "confine/seccomp_programs.h"

namespace passvm::confine {
namespace {

// ---- State set by configure() ----

SeccompMode g_mode = SeccompMode::Off;
bool g_test_violation = false;
std::atomic<bool> g_violation_requested{false};
std::array<std::vector<sock_filter>, std::size(kThreadClasses)> g_programs;
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
  const char* name = builtin_syscall_name(nr);
  if (!name) name = "?";
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

}  // namespace

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
  // And it reads /proc/sys/vm/overcommit_memory the first time it shrinks a thread's arena (a freed
  // API request body of some 30 KB did it, and the filter killed passvm): arenas are never trimmed, so
  // it never has to. (Their heaps are 64 MiB at most, and an empty one is still given back whole.)
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
  // Compiled at build time (seccomp_programs.h): only the run-time values go in here.
  const FilterValues values{static_cast<uint32_t>(getpid()), drop};
  for (ThreadClass c : kThreadClasses) g_programs[index_of(c)] = builtin_filter(c, mode, values);
  if (isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &g_saved_terminal) == 0) g_terminal_fd = STDIN_FILENO;
  struct sigaction sa {};
  sa.sa_sigaction = on_sigsys;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSYS, &sa, nullptr) != 0)
    throw std::runtime_error(fmt::format("seccomp: cannot handle SIGSYS: {}", strerror(errno)));
}

SeccompMode mode() { return g_mode; }

namespace {
std::atomic<void (*)()> g_before_dying{nullptr};

void on_crash(int sig) {
  if (auto fn = g_before_dying.load()) fn();
  raise(sig);  // SA_RESETHAND put the default back, SA_NODEFER lets it through now: tgkill only
}
}  // namespace

void die_of_crashes(void (*before_dying)()) {
  g_before_dying = before_dying;
  struct sigaction sa {};
  sa.sa_handler = on_crash;
  sa.sa_flags = SA_RESETHAND | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL})
    if (sigaction(sig, &sa, nullptr) != 0)
      throw std::runtime_error(fmt::format("cannot handle signal {}: {}", sig, strerror(errno)));
}

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
