// confine: the filters passvm loads, compiled at build time (seccomp_gen, see seccomp_compile.h).
//
// A rule that compares an argument with a value known only at run time was compiled with a
// placeholder in its place (kPlaceholders: values no rule compares with otherwise); builtin_filter()
// copies a program and writes the real values over the placeholders. A program in which a
// placeholder is not where it must be is refused (std::logic_error): the build and the code
// disagree, and a filter that would not compare with the real value must not be loaded.
#pragma once

#include <linux/filter.h>

#include <cstdint>
#include <vector>

#include "confine/seccomp.h"
#include "confine/seccomp_compile.h"

namespace passvm::confine {

struct Placeholders {
  uint32_t pid, uid, gid, groups;
};
inline constexpr Placeholders kPlaceholders{0x5ecc0d01, 0x5ecc0d02, 0x5ecc0d03, 0x5ecc0d04};
// System call numbers with a name here: 0 to kSyscallNameCount - 1.
inline constexpr int kSyscallNameCount = 512;

// The class's program for these values (mode Kill or Log).
std::vector<sock_filter> builtin_filter(ThreadClass c, SeccompMode mode, const FilterValues& values);

// The name of system call nr on this architecture (libseccomp's, taken at build time), nullptr for a
// number without one. No allocation: the SIGSYS handler uses it.
const char* builtin_syscall_name(int nr);

}  // namespace passvm::confine
