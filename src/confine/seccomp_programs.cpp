#include "confine/seccomp_programs.h"

#include <iterator>
#include <stdexcept>

#include <fmt/format.h>

namespace passvm::confine {
namespace {

struct Program {
  const sock_filter* code;
  size_t size;
};

#include "confine/seccomp_programs.inc"

static_assert(std::size(kPrograms) == std::size(kThreadClasses));

}  // namespace

std::vector<sock_filter> builtin_filter(ThreadClass c, SeccompMode mode, const FilterValues& values) {
  if (mode == SeccompMode::Off) throw std::logic_error("seccomp: no filter in mode off");
  const Program& p = kPrograms[static_cast<size_t>(c)][mode == SeccompMode::Log ? 1 : 0][values.drop ? 1 : 0];
  std::vector<sock_filter> prog(p.code, p.code + p.size);
  // One pass, each instruction compared with the placeholders as built: a real value that happens to equal
  // another placeholder is not replaced again.
  const uint32_t placeholders[] = {kPlaceholders.pid, kPlaceholders.uid, kPlaceholders.gid, kPlaceholders.groups};
  const uint32_t real[] = {values.pid, values.drop ? values.drop->uid : 0, values.drop ? values.drop->gid : 0,
                           values.drop ? values.drop->groups : 0};
  int found[4] = {};
  for (sock_filter& insn : prog) {
    if (insn.code != (BPF_JMP | BPF_JEQ | BPF_K)) continue;
    for (size_t i = 0; i < 4; i++) {
      if (insn.k == placeholders[i]) {
        insn.k = real[i];
        found[i]++;
        break;
      }
    }
  }
  // Every class may signal its own process (tgkill); with a drop, it may make the drop's calls
  // (setresuid and setresgid compare three arguments each, setgroups one).
  const char* what[] = {"process id", "user id", "group id", "group count"};
  const int expected[] = {1, values.drop ? 3 : 0, values.drop ? 3 : 0, values.drop ? 1 : 0};
  for (size_t i = 0; i < 4; i++) {
    if (found[i] != expected[i])
      throw std::logic_error(fmt::format("seccomp: the built-in {} filter compares the {} {} times, not {}: rebuild "
                                         "passvm",
                                         class_name(c), what[i], found[i], expected[i]));
  }
  return prog;
}

const char* builtin_syscall_name(int nr) {
  return nr >= 0 && nr < kSyscallNameCount ? kSyscallNames[static_cast<size_t>(nr)] : nullptr;
}

}  // namespace passvm::confine
