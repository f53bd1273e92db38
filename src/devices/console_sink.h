// devices: ConsoleSink, where the host's console input goes: the guest's UART or its virtio console;
// and how either writes the guest's output.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace passvm::devices {

class ConsoleSink {
 public:
  // Takes as many bytes as the guest has room for now and returns how many. When some did not fit,
  // rx_space_fd() (an eventfd) becomes readable once the guest has made room.
  virtual size_t receive(std::span<const uint8_t> bytes) = 0;
  virtual int rx_space_fd() const = 0;

 protected:
  ~ConsoleSink() = default;
};

// Writes all of `bytes` to fd (-1: nowhere). An error drops the rest: the guest must not stall on its console.
void write_guest_output(int fd, std::string_view bytes);

}  // namespace passvm::devices
