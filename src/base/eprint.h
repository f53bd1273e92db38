// base: eprint, how every layer writes a message for the user on stderr.
//
// fmt::print(stderr, ...) throws when the write fails: stderr a pipe whose reader has gone (an
// orchestrator's log collector restarted), a terminal hung up, a non-blocking pipe full. A message is
// never worth the VM: thrown from a vCPU, a device's exit handler or a destructor it would end the
// process with the device still mapped. eprint formats and writes the same text and drops it when it
// cannot be written. It holds no state and may be called from any thread at any time.
#pragma once

#include <cstdio>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace passvm {

template <typename... Args>
void eprint(fmt::format_string<Args...> format, Args&&... args) noexcept {
  try {
    std::string text = fmt::format(format, std::forward<Args>(args)...);
    std::fwrite(text.data(), 1, text.size(), stderr);  // one write for a whole line, as fmt's print
  } catch (...) {
    // Out of memory while formatting: the message is lost, nothing else is.
  }
}

}  // namespace passvm
