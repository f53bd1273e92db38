// cli: the passvm command line, in bhyve's style.
//
//   passvm -c 2 -m 512M -s 0,hostbridge -s 3,passthru,0000:03:00.0 -l com1,stdio
//          --kernel bzImage --initrd initrd.img --append "console=ttyS0" [VMNAME]
//   passvm --api-socket /run/passvm.sock [the same, or nothing: the VM then comes from vm.create]
//
// parse_command_line() is pure: it returns a MachineConfig, or the text to
// print (help, version) and the status to exit with, or an error message that
// names the bad option and what would be right. Host tooling subcommands
// (list, reserve, release, check) are routed before this parser runs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "confine/seccomp.h"
#include "vmm/config.h"

namespace passvm::cli {

struct ParseResult {
  std::optional<MachineConfig> config;  // set when a VM was given on the command line
  bool run = false;                     // passvm should run (a VM, an API socket, or both)
  std::string api_socket;               // --api-socket PATH: serve the API there (config may then be empty)
  MachineConfig api_defaults;           // the name, -v, --stats, --guest-decompress: for vm.create's VMs
  confine::SeccompMode seccomp = confine::SeccompMode::Kill;  // --seccomp on|log|off
  std::string user;                     // --user NAME: drop to this user once the VM's files are open
  std::string message;                  // help/version text, or the error
  int exit_status = 0;                  // when config is empty: 0 for help/version, 1 for errors
};

ParseResult parse_command_line(const std::vector<std::string>& args);  // args exclude argv[0]

// "512M", "2G", "65536K", "512MiB"; a bare number is MiB, as in bhyve.
std::optional<uint64_t> parse_size(const std::string& text);
// "SLOT[:FUNC],EMULATION[,CONFIG]"; throws std::invalid_argument with a user-facing message.
SlotConfig parse_slot(const std::string& text);

}  // namespace passvm::cli
