#include "confine/seccomp.h"
#include "confine/seccomp_compile.h"
#include "confine/seccomp_programs.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <linux/kvm.h>
#include <linux/vfio.h>
#include <grp.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <latch>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>

namespace passvm::confine {
namespace {

struct Outcome {
  int status = -1;  // exit status, or 128 + signal
  std::string err;  // what the child wrote to stderr
};

// Runs body in a forked child (filters cannot be removed, so never in the test process) and
// returns how it ended. body's return value is the exit status; the raw exit_group skips what
// libc and the sanitizers do at exit (a leak check, for one), which makes calls no filter here allows.
Outcome in_child(const std::function<int()>& body) {
  int pipefd[2];
  if (pipe(pipefd) != 0) return {};
  pid_t pid = fork();
  if (pid == 0) {
    close(pipefd[0]);
    dup2(pipefd[1], STDERR_FILENO);
    int rc = 99;
    try {
      rc = body();
    } catch (const std::exception& e) {
      std::string m = std::string("exception: ") + e.what() + "\n";
      [[maybe_unused]] ssize_t w = write(STDERR_FILENO, m.data(), m.size());
    }
    syscall(SYS_exit_group, rc);
  }
  close(pipefd[1]);
  Outcome o;
  char buf[512];
  for (ssize_t n; (n = read(pipefd[0], buf, sizeof buf)) > 0;) o.err.append(buf, static_cast<size_t>(n));
  close(pipefd[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  o.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return o;
}

TEST(SeccompTest, ForbiddenCallOnAVcpuThreadEndsTheProcessNamingCallAndThread) {
  Outcome o = in_child([] {
    configure(SeccompMode::Kill);
    enter(ThreadClass::Vcpu, "vcpu3");
    make_forbidden_call();
    return 0;  // not reached
  });
  EXPECT_EQ(o.status, kExitSeccomp) << o.err;
  EXPECT_NE(o.err.find("thread 'vcpu3'"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find("socket (41)"), std::string::npos) << o.err;
}

// A confined thread that crashes (an exception escaping it: abort) ends passvm by its own signal, after
// the terminal is put back, and not as a forbidden system call that would hide the crash.
TEST(SeccompTest, ACrashOnAConfinedThreadDiesOfItsSignal) {
  for (ThreadClass c : {ThreadClass::Vcpu, ThreadClass::Api, ThreadClass::Console}) {
    Outcome o = in_child([c] {
      configure(SeccompMode::Kill);
      die_of_crashes([] {
        const char said[] = "terminal put back\n";
        [[maybe_unused]] ssize_t w = write(STDERR_FILENO, said, sizeof said - 1);
      });
      std::thread t([c] {
        enter(c);
        abort();
      });
      t.join();
      return 0;  // not reached
    });
    EXPECT_EQ(o.status, 128 + SIGABRT) << class_name(c) << ": " << o.err;
    EXPECT_NE(o.err.find("terminal put back"), std::string::npos) << o.err;
    EXPECT_EQ(o.err.find("forbids"), std::string::npos) << o.err;
  }
}

TEST(SeccompTest, AllowedCallsStillWorkUnderTheVcpuFilter) {
  Outcome o = in_child([] {
    configure(SeccompMode::Kill);
    enter(ThreadClass::Vcpu);
    int efd = eventfd(0, EFD_CLOEXEC);  // MSI-X vectors on demand
    if (efd < 0) return 1;
    uint64_t v = 1;
    if (write(efd, &v, sizeof v) != sizeof v || read(efd, &v, sizeof v) != sizeof v) return 2;
    close(efd);
    // An allowed ioctl on the wrong file fails the ordinary way rather than killing.
    if (ioctl(efd, KVM_RUN, 0) != -1 || errno != EBADF) return 3;
    return 0;
  });
  EXPECT_EQ(o.status, 0) << o.err;
}

TEST(SeccompTest, AnIoctlNumberNotInTheClassListIsForbidden) {
  Outcome o = in_child([] {
    configure(SeccompMode::Kill);
    enter(ThreadClass::PeerDma);
    ioctl(-1, KVM_RUN, 0);  // the peer-DMA worker only maps and unmaps
    return 0;
  });
  EXPECT_EQ(o.status, kExitSeccomp) << o.err;
  EXPECT_NE(o.err.find("ioctl (16)"), std::string::npos) << o.err;
}

TEST(SeccompTest, APeerDmaMapRefusedForMemoryCanBeReported) {
  // vfio::Container::map_dma words an ENOMEM or EPERM with the locked-memory limit, on whichever thread
  // mapped: the peer-DMA worker's refused BAR must be a warning, not a killed process.
  Outcome o = in_child([] {
    configure(SeccompMode::Kill);
    enter(ThreadClass::PeerDma);
    rlimit rl{};
    return getrlimit(RLIMIT_MEMLOCK, &rl) == 0 ? 0 : 1;
  });
  EXPECT_EQ(o.status, 0) << o.err;
}

TEST(SeccompTest, SignalsGoOnlyToPassvmsOwnThreads) {
  Outcome own = in_child([] {
    configure(SeccompMode::Kill);
    enter(ThreadClass::Vcpu);
    return syscall(SYS_tgkill, getpid(), gettid(), 0) == 0 ? 0 : 1;
  });
  EXPECT_EQ(own.status, 0) << own.err;
  pid_t parent = getpid();
  Outcome other = in_child([parent] {
    configure(SeccompMode::Kill);
    enter(ThreadClass::Vcpu);
    syscall(SYS_tgkill, parent, parent, 0);
    return 0;
  });
  EXPECT_EQ(other.status, kExitSeccomp) << other.err;
}

// glibc's malloc looks up the CPU count in sysfs when a ninth arena is wanted; a confined thread may
// not open files, so configure() must have spared it that.
TEST(SeccompTest, ManyThreadsAllocatingUnderAFilterNeedNoFile) {
  Outcome o = in_child([] {
    configure(SeccompMode::Kill);
    std::thread([] {}).join();  // glibc sets up its thread signals at the first thread, as passvm's setup does
    enter(ThreadClass::Api);    // may start threads, may not open files
    constexpr int kThreads = 24;
    std::latch all_allocated(kThreads);
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; i++)
      threads.emplace_back([&] {
        void* volatile p = malloc(512);  // a thread's first allocation takes an arena of its own
        all_allocated.arrive_and_wait();
        free(p);
      });
    for (auto& t : threads) t.join();
    return 0;
  });
  EXPECT_EQ(o.status, 0) << o.err;
}

TEST(SeccompTest, LogModeLetsTheCallThrough) {
  Outcome o = in_child([] {
    configure(SeccompMode::Log);
    enter(ThreadClass::Vcpu);
    int fd = static_cast<int>(syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0));
    return fd >= 0 ? 0 : 1;
  });
  EXPECT_EQ(o.status, 0) << o.err;
}

TEST(SeccompTest, OffModeNamesTheThreadAndInstallsNothing) {
  Outcome o = in_child([] {
    configure(SeccompMode::Off);
    std::string comm;
    std::thread t([&] {
      enter(ThreadClass::Console);
      std::ifstream f("/proc/thread-self/comm");
      std::getline(f, comm);
      make_forbidden_call();
    });
    t.join();
    std::ifstream st("/proc/self/status");
    std::string line;
    while (std::getline(st, line))
      if (line.rfind("Seccomp:", 0) == 0 && line.find('0') == std::string::npos) return 2;
    return comm == "console" ? 0 : 1;
  });
  EXPECT_EQ(o.status, 0) << o.err;
}

TEST(SeccompTest, ControlThreadStartsConfinedThreadsButCannotFork) {
  Outcome threads = in_child([] {
    configure(SeccompMode::Kill);
    int fds[2];
    if (pipe(fds) != 0) return 3;
    enter(ThreadClass::Control);
    std::atomic<pid_t> tid{0};
    std::thread t([&] {
      enter(ThreadClass::Signals);  // stacks on the control filter
      tid = gettid();
      char c;
      [[maybe_unused]] ssize_t r = read(fds[0], &c, 1);
    });
    while (tid == 0) std::this_thread::yield();
    int seccomp_field = -1;
    std::ifstream f("/proc/self/task/" + std::to_string(tid) + "/status");
    std::string line;
    while (std::getline(f, line))
      if (line.rfind("Seccomp:", 0) == 0) seccomp_field = std::stoi(line.substr(8));
    [[maybe_unused]] ssize_t w = write(fds[1], "x", 1);
    t.join();
    return seccomp_field == 2 ? 0 : 1;
  });
  EXPECT_EQ(threads.status, 0) << threads.err;

  Outcome fork_ = in_child([] {
    configure(SeccompMode::Kill);
    enter(ThreadClass::Control);
    syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);  // fork
    return 0;
  });
  EXPECT_EQ(fork_.status, kExitSeccomp) << fork_.err;
  EXPECT_NE(fork_.err.find("clone"), std::string::npos) << fork_.err;
}

TEST(SeccompTest, ThreadsConfinedBeforeAPrivilegeDropFollowIt) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to drop privileges";
  Outcome o = in_child([] {
    configure(SeccompMode::Kill, DropTarget{65534, 65534, 0});
    int fds[2];
    if (pipe(fds) != 0) return 1;
    std::thread t([&] {
      enter(ThreadClass::Signals);
      char c;
      [[maybe_unused]] ssize_t r = read(fds[0], &c, 1);
    });
    // glibc makes the waiting thread switch ids too, which its filter allows for this target only.
    if (setgroups(0, nullptr) != 0 || setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
      return 2;
    [[maybe_unused]] ssize_t w = write(fds[1], "x", 1);
    t.join();
    return getuid() == 65534 ? 0 : 3;
  });
  EXPECT_EQ(o.status, 0) << o.err;
}

// recorded/CLASS.txt: what the class's threads called in a traced lab run, one "SYSCALL" or
// "ioctl REQUEST" a line (see the README).
std::set<std::string> recorded(ThreadClass c) {
  std::ifstream f(std::string(PASSVM_CONFINE_SOURCE_DIR) + "/recorded/" + class_name(c) + ".txt");
  std::set<std::string> calls;
  for (std::string line; std::getline(f, line);)
    if (!line.empty() && line[0] != '#') calls.insert(line);
  return calls;
}

// Request numbers by the names strace prints. VFIO's requests carry no type or size, so numbers are
// shared across file kinds and strace, not knowing the file, may print another request's name:
// VFIO_IOMMU_UNMAP_DMA is printed as VFIO_DEVICE_QUERY_GFX_PLANE, VFIO_IOMMU_MAP_DMA as
// VFIO_DEVICE_PCI_HOT_RESET, VFIO_IOMMU_GET_INFO as VFIO_DEVICE_GET_PCI_HOT_RESET_INFO.
std::optional<unsigned long> request_number(const std::string& name) {
  static const std::map<std::string, unsigned long> aliases = {
      {"VFIO_DEVICE_QUERY_GFX_PLANE", VFIO_DEVICE_QUERY_GFX_PLANE},
      {"VFIO_DEVICE_GET_GFX_DMABUF", VFIO_DEVICE_GET_GFX_DMABUF},
      {"FIONBIO", FIONBIO},
  };
  if (auto it = aliases.find(name); it != aliases.end()) return it->second;
  for (ThreadClass c : kThreadClasses)
    for (const Ioctl& i : allowed_ioctls(c))
      if (name == i.name) return i.request;
  return std::nullopt;
}

TEST(SeccompTest, StraceNamesOfVfioRequestsMeanTheNumbersPassvmUses) {
  EXPECT_EQ(request_number("VFIO_DEVICE_QUERY_GFX_PLANE"), VFIO_IOMMU_UNMAP_DMA);
  EXPECT_EQ(request_number("VFIO_DEVICE_PCI_HOT_RESET"), VFIO_IOMMU_MAP_DMA);
}

TEST(SeccompTest, EveryCallRecordedInTheLabIsAllowedForItsClass) {
  size_t total = 0;
  for (ThreadClass c : kThreadClasses) {
    auto calls = recorded(c);
    total += calls.size();
    auto syscalls = allowed_syscalls(c);
    auto ioctls = allowed_ioctls(c);
    for (const std::string& call : calls) {
      if (call == "clone3" && (c == ThreadClass::Control || c == ThreadClass::Api))
        continue;  // answered ENOSYS by the filter, so glibc uses clone (see compile())
      if (call.rfind("ioctl ", 0) == 0) {
        std::string req = call.substr(6);
        auto nr = request_number(req);
        ASSERT_TRUE(nr) << "recorded/" << class_name(c) << ".txt: unknown ioctl request " << req;
        EXPECT_TRUE(std::any_of(ioctls.begin(), ioctls.end(), [&](const Ioctl& i) { return *nr == i.request; }))
            << class_name(c) << " made ioctl " << req << ", which its filter forbids";
      } else {
        EXPECT_EQ(std::count(syscalls.begin(), syscalls.end(), call), 1)
            << class_name(c) << " made " << call << ", which its filter forbids";
      }
    }
  }
  // The vCPU, the control thread and the API threads are busy in every lab run; the files must be there.
  EXPECT_FALSE(recorded(ThreadClass::Vcpu).empty());
  EXPECT_FALSE(recorded(ThreadClass::Control).empty());
  EXPECT_FALSE(recorded(ThreadClass::Api).empty());
  EXPECT_GT(total, 50u);
}

TEST(SeccompTest, ControlAllowsWhatEveryThreadItMayStartLaterAllows) {
  auto control = allowed_syscalls(ThreadClass::Control);
  auto control_ioctls = allowed_ioctls(ThreadClass::Control);
  for (ThreadClass c : kThreadClasses) {
    if (c == ThreadClass::Api) continue;  // started before the control thread confines itself
    for (const auto& s : allowed_syscalls(c))
      EXPECT_EQ(std::count(control.begin(), control.end(), s), 1) << class_name(c) << ": " << s;
    for (const Ioctl& i : allowed_ioctls(c))
      EXPECT_TRUE(std::any_of(control_ioctls.begin(), control_ioctls.end(),
                              [&](const Ioctl& o) { return o.request == i.request; }))
          << class_name(c) << ": " << i.name;
  }
}

TEST(SeccompTest, ParseMode) {
  EXPECT_EQ(parse_mode("on"), SeccompMode::Kill);
  EXPECT_EQ(parse_mode("kill"), SeccompMode::Kill);
  EXPECT_EQ(parse_mode("log"), SeccompMode::Log);
  EXPECT_EQ(parse_mode("off"), SeccompMode::Off);
  EXPECT_EQ(parse_mode("true"), SeccompMode::Kill);  // cloud-hypervisor's spelling, which Kata passes
  EXPECT_EQ(parse_mode("false"), SeccompMode::Off);
  EXPECT_EQ(parse_mode("yes"), std::nullopt);
}

TEST(SeccompTest, EveryClassCompilesAndNoClassMayExecOrOpenSockets) {
  for (ThreadClass c : kThreadClasses) {
    auto l = allowed_syscalls(c);
    for (const char* bad : {"execve", "execveat", "socket", "ptrace", "mount", "init_module", "finit_module",
                            "kexec_load", "bpf", "process_vm_writev"})
      EXPECT_EQ(std::count(l.begin(), l.end(), bad), 0) << class_name(c) << " allows " << bad;
  }
  Outcome o = in_child([] {
    configure(SeccompMode::Kill);
    return 0;
  });
  EXPECT_EQ(o.status, 0) << o.err;
}

std::string text(const std::vector<sock_filter>& prog) {
  std::ostringstream o;
  for (const sock_filter& i : prog) o << std::hex << i.code << ' ' << int(i.jt) << ' ' << int(i.jf) << ' ' << i.k << '\n';
  return o.str();
}

// A classic BPF interpreter for what libseccomp emits (loads of seccomp_data words, jumps, AND, returns):
// a program's verdict for one system call. An instruction it does not know fails the test.
struct Call {
  uint32_t nr;
  uint64_t args[6];
};
uint32_t run(const std::vector<sock_filter>& prog, const Call& call) {
  uint32_t data[16] = {static_cast<uint32_t>(call.nr), 0xc000003e /* AUDIT_ARCH_X86_64 */, 0, 0};
  for (int i = 0; i < 6; i++) {
    data[4 + 2 * i] = static_cast<uint32_t>(call.args[i]);
    data[5 + 2 * i] = static_cast<uint32_t>(call.args[i] >> 32);
  }
  uint32_t a = 0;
  for (size_t pc = 0; pc < prog.size(); pc++) {
    const sock_filter& i = prog[pc];
    switch (i.code) {
      case BPF_LD | BPF_W | BPF_ABS:
        if (i.k % 4 != 0 || i.k / 4 >= std::size(data)) throw std::runtime_error("load outside seccomp_data");
        a = data[i.k / 4];
        break;
      case BPF_ALU | BPF_AND | BPF_K: a &= i.k; break;
      case BPF_JMP | BPF_JA: pc += i.k; break;
      case BPF_JMP | BPF_JEQ | BPF_K: pc += a == i.k ? i.jt : i.jf; break;
      case BPF_JMP | BPF_JGT | BPF_K: pc += a > i.k ? i.jt : i.jf; break;
      case BPF_JMP | BPF_JGE | BPF_K: pc += a >= i.k ? i.jt : i.jf; break;
      case BPF_JMP | BPF_JSET | BPF_K: pc += (a & i.k) != 0 ? i.jt : i.jf; break;
      case BPF_RET | BPF_K: return i.k;
      default: throw std::runtime_error("instruction " + std::to_string(i.code) + " not interpreted");
    }
  }
  throw std::runtime_error("fell off the end of the program");
}

// The calls whose verdicts are compared: every system call number with harmless arguments, and for those
// whose arguments a rule compares (ioctl, tgkill, clone, the drop's calls), arguments that are each value
// any rule compares with, the values given, and their neighbours: all alike, and one argument off at a time.
std::vector<Call> probe_calls(const FilterValues& v) {
  std::set<uint64_t> values = {0, 1, 2, 3, 0x10000, 0x7fffffff, 0xffffffff, 1ull << 32, kPlaceholders.pid,
                               kPlaceholders.uid, kPlaceholders.gid, kPlaceholders.groups, v.pid};
  if (v.drop) values.insert({v.drop->uid, v.drop->gid, v.drop->groups});
  for (ThreadClass c : kThreadClasses)
    for (const Ioctl& i : allowed_ioctls(c)) values.insert(i.request);
  std::set<uint64_t> near;
  for (uint64_t x : values) near.insert({x, x + 1, x - 1, x | (1ull << 32)});
  std::vector<Call> calls;
  for (uint32_t nr = 0; nr < 460; nr++) calls.push_back({nr, {0, 0, 0, 0, 0, 0}});
  const uint32_t with_args[] = {__NR_ioctl, __NR_tgkill, __NR_clone, __NR_setresuid, __NR_setresgid, __NR_setgroups};
  for (uint32_t nr : with_args) {
    for (uint64_t x : near) {
      calls.push_back({nr, {x, x, x, 0, 0, 0}});
      calls.push_back({nr, {0, x, 0, 0, 0, 0}});
      if (v.drop) {
        uint64_t id = nr == __NR_setresgid ? v.drop->gid : v.drop->uid;
        for (int off = 0; off < 3; off++) {
          Call c{nr, {id, id, id, 0, 0, 0}};
          c.args[off] = x;
          calls.push_back(c);
        }
      }
    }
  }
  return calls;
}

// passvm loads programs compiled at build time, with the run-time values written over placeholders. Each must
// decide every call as the program libseccomp compiles for the same values does, whatever they are: ids of
// root, of nobody, of a user (whose uid and gid alike make libseccomp share code between the two rules), and
// values equal to another placeholder (which must not be replaced twice). Where the values differ from each
// other the programs are the same instruction for instruction.
TEST(SeccompProgramsTest, BuiltinFiltersDecideAsLibseccompsForTheSameValues) {
  const std::optional<DropTarget> drops[] = {std::nullopt, DropTarget{1000, 1000, 2}, DropTarget{0, 0, 0},
                                             DropTarget{65534, 65534, 0}, DropTarget{1001, 1002, 5},
                                             DropTarget{kPlaceholders.gid, kPlaceholders.groups, kPlaceholders.pid}};
  const uint32_t pids[] = {static_cast<uint32_t>(getpid()), 1, 4194304, 1000, 77, kPlaceholders.uid};
  int identical = 0;
  size_t calls_compared = 0;
  for (ThreadClass c : kThreadClasses) {
    for (SeccompMode mode : {SeccompMode::Kill, SeccompMode::Log}) {
      for (size_t i = 0; i < std::size(drops); i++) {
        FilterValues v{pids[i], drops[i]};
        std::string what = std::string(class_name(c)) + (mode == SeccompMode::Log ? " log" : " kill") + " pid " +
                           std::to_string(v.pid) + (v.drop ? " uid " + std::to_string(v.drop->uid) : " no drop");
        auto built = builtin_filter(c, mode, v);
        auto compiled = compile_filter(c, mode, v);
        for (const Call& call : probe_calls(v)) {
          ASSERT_EQ(run(built, call), run(compiled, call))
              << what << ": system call " << call.nr << " args " << call.args[0] << ", " << call.args[1] << ", "
              << call.args[2];
          calls_compared++;
        }
        if (text(built) == text(compiled)) identical++;
        else
          EXPECT_TRUE(v.drop && (v.drop->uid == v.drop->gid || v.drop->groups == v.pid)) << what << " differs";
      }
    }
  }
  // The three drops with uid equal to gid differ (shared code); the other three cases are identical.
  EXPECT_EQ(identical, 8 * 2 * 3);
  EXPECT_GT(calls_compared, 8u * 2 * 6 * 460);
}

TEST(SeccompProgramsTest, ThePlaceholdersAreGoneAndTheValuesIn) {
  FilterValues v{4242, DropTarget{1001, 1002, 77777}};
  auto prog = builtin_filter(ThreadClass::Control, SeccompMode::Kill, v);
  auto count = [&](uint32_t k) {
    return std::count_if(prog.begin(), prog.end(), [k](const sock_filter& i) { return i.k == k; });
  };
  for (uint32_t p : {kPlaceholders.pid, kPlaceholders.uid, kPlaceholders.gid, kPlaceholders.groups})
    EXPECT_EQ(count(p), 0) << std::hex << p;
  EXPECT_EQ(count(4242), 1);
  EXPECT_EQ(count(1001), 3);
  EXPECT_EQ(count(1002), 3);
  EXPECT_EQ(count(77777), 1);
  EXPECT_THROW(builtin_filter(ThreadClass::Vcpu, SeccompMode::Off, v), std::logic_error);
}

TEST(SeccompProgramsTest, SyscallNamesAreLibseccomps) {
  for (int nr = -1; nr <= kSyscallNameCount; nr++) {
    std::string want = nr >= 0 && nr < kSyscallNameCount ? libseccomp_syscall_name(nr) : "";
    const char* got = builtin_syscall_name(nr);
    EXPECT_EQ(got ? std::string(got) : std::string(), want) << nr;
  }
  EXPECT_STREQ(builtin_syscall_name(__NR_socket), "socket");
}

}  // namespace
}  // namespace passvm::confine
