// host: shared error type of the host-reservation layer.
//
// Every failure the user can cause or fix (a malformed address, a device the
// host still needs, a missing driver) is raised as HostError carrying one line
// that names the problem and the fix. The CLI prints that line and exits
// non-zero; nothing below the CLI prints or exits on its own.
#pragma once

#include <stdexcept>
#include <string>

namespace passvm::host {

class HostError : public std::runtime_error {
 public:
  explicit HostError(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace passvm::host
