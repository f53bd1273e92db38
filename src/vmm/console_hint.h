// vmm/console_hint.h: what passvm tells a user whose guest stopped without showing a word.
//
// A guest that resets or triple-faults before its kernel's console works leaves the user with
// passvm's one line ("the guest reset the machine") and nothing of the kernel's panic. The usual
// causes are a command line that names no console passvm shows, and console=hvc0, which prints
// only once the guest's virtio console driver runs (a module in most distributions' kernels,
// loaded from the initramfs, long after an early panic). The hint names the cause and the fix.
// Pure: the machine says which consoles it has and whether any printed.
#pragma once

#include <string>
#include <string_view>

namespace passvm {

struct ConsoleSetup {
  bool com1 = false;            // -l com1,stdio
  bool virtio_console = false;  // -l virtio-console,stdio
};

// The hint for a guest that stopped before printing a byte on any console passvm shows, given the
// kernel command line; empty when there is nothing useful to say.
std::string silent_stop_hint(ConsoleSetup consoles, std::string_view cmdline);

}  // namespace passvm
