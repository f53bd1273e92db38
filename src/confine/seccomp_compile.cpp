// Compiling a thread class's allow list (seccomp_lists.cpp) into a BPF program with libseccomp.
#include "confine/seccomp_compile.h"

#include <linux/filter.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace passvm::confine {
namespace {

// libseccomp's SCMP_A0()... are C compound literals; these are the same comparisons in C++.
scmp_arg_cmp arg_eq(unsigned arg, scmp_datum_t value) { return {arg, SCMP_CMP_EQ, value, 0}; }
scmp_arg_cmp arg_masked_eq(unsigned arg, scmp_datum_t mask, scmp_datum_t value) {
  return {arg, SCMP_CMP_MASKED_EQ, mask, value};
}

}  // namespace

std::vector<sock_filter> compile_filter(ThreadClass c, SeccompMode mode, const FilterValues& values) {
  const std::optional<DropTarget>& drop = values.drop;
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
      check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, arg_eq(0, static_cast<scmp_datum_t>(values.pid))),
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


std::string libseccomp_syscall_name(int nr) {
  char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
  std::string s = name ? name : "";
  free(name);
  return s;
}

}  // namespace passvm::confine
