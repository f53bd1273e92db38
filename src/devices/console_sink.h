// devices: ConsoleSink, where the host's console input goes: the guest's UART or its virtio console;
// and how either writes the guest's output.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
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

// Writes all of `bytes` to fd (-1: nowhere). An error drops the rest: the guest must not stall on its console.
void write_guest_output(int fd, std::string_view bytes);

// passvm's own messages and the guest's console on one terminal (or file, or pipe): a message that comes
// while the guest is half-way through a line would otherwise continue that line ("...2.40passvm: guest
// RAM allocated"), where neither a reader nor a log parser finds it. When `guest_fd` and `message_fd`
// are the same file (same device and inode), returns a stream that writes to `message_fd` and begins a
// message with a line break when the guest's last output to `guest_fd` did not end its line; nullptr
// when they differ. Unbuffered, like stderr. Process-wide: the last call decides which guest output is
// watched. Call before any thread starts; the stream lives until the process ends.
FILE* messages_on_their_own_lines(int guest_fd, int message_fd);

}  // namespace passvm::devices
