// confine: turning the allow lists into BPF programs, with libseccomp.
//
// passvm itself does not do this at run time: compiling the eight classes' filters took most of the
// CPU passvm's start used before its setup (6.6 of 10 million instructions, about 50 ms in the lab's
// nested L1), so seccomp_gen compiles every program at build time, with placeholder values where a
// rule names something known only at run time (the process id, the ids a privilege drop switches
// to), and passvm puts the real values in (seccomp_programs.h). This header is for seccomp_gen and
// the tests, which check that the two ways give the same program for the same values: passvm does
// not link libseccomp.
#pragma once

#include <linux/filter.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "confine/seccomp.h"

namespace passvm::confine {

// What a class's rules compare system call arguments with.
struct FilterValues {
  uint32_t pid = 0;                 // tgkill's target process: passvm's own
  std::optional<DropTarget> drop;  // setresuid/setresgid/setgroups to these ids only; none without a drop
};

// Whether a class's threads start threads (and so may call clone, and get clone3 answered ENOSYS).
bool starts_threads(ThreadClass c);

// The class's program for these values. Throws std::runtime_error when libseccomp cannot build it.
std::vector<sock_filter> compile_filter(ThreadClass c, SeccompMode mode, const FilterValues& values);

// libseccomp's name for system call nr on this architecture, "" for none.
std::string libseccomp_syscall_name(int nr);

}  // namespace passvm::confine
