// seccomp_gen OUT.inc: every thread class's filter, in both modes, with and without a privilege drop,
// compiled with placeholders for the run-time values (seccomp_programs.h), and the system call names
// the SIGSYS handler prints, as C++ initializers that seccomp_programs.cpp includes.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "confine/seccomp_compile.h"
#include "confine/seccomp_programs.h"

namespace {

using namespace passvm::confine;

std::string program_text(const std::vector<sock_filter>& prog) {
  std::string s = "{";
  for (size_t i = 0; i < prog.size(); i++) {
    if (i % 4 == 0) s += "\n   ";
    s += fmt::format(" {{{:#x}, {}, {}, {:#x}}},", prog[i].code, prog[i].jt, prog[i].jf, prog[i].k);
  }
  return s + "\n}";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: seccomp_gen OUT.inc\n");
    return 2;
  }
  try {
    std::string out = "// Made by seccomp_gen at build time (src/confine/seccomp_gen.cpp): do not edit.\n";
    const DropTarget drop{kPlaceholders.uid, kPlaceholders.gid, kPlaceholders.groups};
    std::string table = "const Program kPrograms[][2][2] = {\n";
    for (ThreadClass c : kThreadClasses) {
      table += "  {";
      for (SeccompMode mode : {SeccompMode::Kill, SeccompMode::Log}) {
        table += "{";
        for (bool with_drop : {false, true}) {
          FilterValues v{kPlaceholders.pid, with_drop ? std::optional(drop) : std::nullopt};
          std::string name = fmt::format("k_{}_{}_{}", static_cast<int>(c), mode == SeccompMode::Kill ? "kill" : "log",
                                         with_drop ? "drop" : "nodrop");
          out += fmt::format("const sock_filter {}[] = {};\n", name, program_text(compile_filter(c, mode, v)));
          table += fmt::format("{{{0}, std::size({0})}}, ", name);
        }
        table += "}, ";
      }
      table += fmt::format("}},  // {}\n", class_name(c));
    }
    out += table + "};\n";
    out += fmt::format("const char* const kSyscallNames[{}] = {{", kSyscallNameCount);
    for (int nr = 0; nr < kSyscallNameCount; nr++) {
      std::string n = libseccomp_syscall_name(nr);
      out += (nr % 8 == 0 ? "\n   " : "") + (n.empty() ? std::string(" nullptr,") : fmt::format(" \"{}\",", n));
    }
    out += "\n};\n";
    std::FILE* f = std::fopen(argv[1], "w");
    if (!f || std::fputs(out.c_str(), f) < 0 || std::fclose(f) != 0) {
      std::fprintf(stderr, "seccomp_gen: cannot write %s\n", argv[1]);
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "seccomp_gen: %s\n", e.what());
    return 1;
  }
  return 0;
}
