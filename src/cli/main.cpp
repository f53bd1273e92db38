// passvm's entry point: host tooling subcommands, or a VM.
#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "cli/options.h"
#include "host/host_cli.h"
#include "vmm/machine.h"

int main(int argc, char** argv) {
  if (argc > 1 && passvm::host::is_host_command(argv[1])) {
    std::string name = std::string("passvm ") + argv[1];
    std::vector<char*> sub(argv + 1, argv + argc);
    sub[0] = name.data();
    return passvm::host::host_main(static_cast<int>(sub.size()), sub.data());
  }
  auto parsed = passvm::cli::parse_command_line(std::vector<std::string>(argv + 1, argv + argc));
  if (!parsed.config) {
    std::fputs(parsed.message.c_str(), parsed.exit_status == 0 ? stdout : stderr);
    if (!parsed.message.empty() && parsed.message.back() != '\n') std::fputc('\n', parsed.exit_status == 0 ? stdout : stderr);
    return parsed.exit_status;
  }
  try {
    return passvm::run_machine(*parsed.config);
  } catch (const std::exception& e) {
    fmt::print(stderr, "passvm: {}\n", e.what());
    return 1;
  }
}
