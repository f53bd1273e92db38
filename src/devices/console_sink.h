// devices: ConsoleSink, where the host's console input goes: the guest's UART or its virtio console.
// (Their output goes to a ConsoleOutput, console_output.h.)
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

// A sink's rx_space_fd(): an eventfd that wakes the input once after the sink refused some and the guest
// has made room since. Not locked: its owner calls it under the lock that guards its receive side.
class RoomSignal {
 public:
  explicit RoomSignal(std::string_view owner);  // owner names the device in an error
  ~RoomSignal();
  RoomSignal(const RoomSignal&) = delete;
  RoomSignal& operator=(const RoomSignal&) = delete;

  int fd() const { return fd_; }
  // The sink took `taken` of `offered` bytes: the input waits for room when it took fewer.
  void offered(size_t offered, size_t taken) { waiting_ = taken < offered; }
  // The guest made room: wakes the input, once, if it waits.
  void room();

 private:
  int fd_ = -1;
  bool waiting_ = false;
};

}  // namespace passvm::devices
