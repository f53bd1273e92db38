#include "vmm/console_hint.h"

#include <vector>

namespace passvm {

namespace {

// The kernel's own parameters: whitespace-separated, up to a "--" that starts init's.
std::vector<std::string_view> kernel_params(std::string_view cmdline) {
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n'; };
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < cmdline.size()) {
    while (i < cmdline.size() && space(cmdline[i])) i++;
    size_t start = i;
    while (i < cmdline.size() && !space(cmdline[i])) i++;
    if (i == start) break;
    std::string_view p = cmdline.substr(start, i - start);
    if (p == "--") break;
    out.push_back(p);
  }
  return out;
}

bool any_starts_with(const std::vector<std::string_view>& params, std::string_view prefix) {
  for (std::string_view p : params)
    if (p.starts_with(prefix)) return true;
  return false;
}

}  // namespace

std::string silent_stop_hint(ConsoleSetup consoles, std::string_view cmdline) {
  const auto params = kernel_params(cmdline);
  const bool on_hvc = any_starts_with(params, "console=hvc");
  // COM1 is ttyS0; console=uart8250,io,0x3f8 (or uart,...) names it by address.
  const bool on_com1 = any_starts_with(params, "console=ttyS0") || any_starts_with(params, "console=uart");
  const bool early = any_starts_with(params, "earlyprintk=") || any_starts_with(params, "earlycon");

  if (on_hvc && consoles.virtio_console && !on_com1) {
    return std::string("its console is hvc0, which shows the kernel's messages only once the guest's virtio console "
                       "driver runs, and it stopped before that: to see why, boot it with console=ttyS0") +
           (consoles.com1 ? "" : " and -l com1,stdio") + " (and earlyprintk=ttyS0 for the very first messages)";
  }
  if (on_hvc && !consoles.virtio_console && !on_com1) {
    return "its command line asks for console=hvc0, but this VM has no virtio console: add -l virtio-console,stdio, "
           "or use console=ttyS0 with -l com1,stdio";
  }
  if (!consoles.com1 && consoles.virtio_console) {
    return "its command line names no console passvm shows: add console=hvc0 (the kernel's messages from when its "
           "virtio console driver runs) or, to see them all, boot it with console=ttyS0 and -l com1,stdio";
  }
  if (!consoles.com1) {
    return "it has no console passvm shows: to see its kernel's messages, boot it with -l com1,stdio and "
           "console=ttyS0";
  }
  if (!on_com1) return "its command line names no console on COM1: add console=ttyS0 to see its kernel's messages";
  if (!early)
    return "it stopped before its kernel's console started: add earlyprintk=ttyS0 to its command line to see the "
           "first messages";
  return {};
}

}  // namespace passvm
