#include "virtio/console.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace passvm::virtio {

Console::Console(int out_fd) : out_fd_(out_fd) {
  space_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (space_fd_ < 0) throw std::runtime_error(std::string("virtio console: eventfd: ") + std::strerror(errno));
}

Console::~Console() { close(space_fd_); }

void Console::read_config(uint64_t, std::span<uint8_t> data) {
  // cols, rows, max_nr_ports, emerg_wr: meaningful only with features this device does not offer.
  std::memset(data.data(), 0, data.size());
}

void Console::reset() {
  // Input refused before the reset may be offered again once the driver posts new buffers.
  if (want_space_) signal_space();
}

bool Console::notified(uint16_t index, Queue& queue) {
  if (index == kTransmitQueue) return transmit(queue);
  if (index == kReceiveQueue && want_space_) signal_space();  // the driver posted buffers for input
  return false;
}

bool Console::transmit(Queue& queue) {
  bool used = false;
  while (auto chain = queue.pop()) {
    // Straight from guest RAM: a chain may be as large as guest RAM, and nothing of it is copied.
    for (const Buffer& b : chain->readable)
      devices::write_guest_output(out_fd_, {reinterpret_cast<const char*>(b.data), b.size});
    queue.push_used(chain->head, 0);
    used = true;
  }
  return used;
}

size_t Console::receive(std::span<const uint8_t> bytes) {
  if (!transport_) return 0;
  size_t taken = 0;
  transport_->with_queue(kReceiveQueue, [&](Queue* queue) {
    bool used = false;
    while (queue && taken < bytes.size()) {
      auto chain = queue->pop();
      if (!chain) break;
      uint32_t written = 0;
      for (const Buffer& b : chain->writable) {
        size_t n = std::min<size_t>(b.size, bytes.size() - taken);
        std::memcpy(b.data, bytes.data() + taken, n);
        taken += n;
        written += static_cast<uint32_t>(n);
        if (taken == bytes.size()) break;
      }
      queue->push_used(chain->head, written);
      used = true;
    }
    // The rest waits in ConsoleInput until the driver posts buffers (or, not running yet, sets up the queue).
    want_space_ = taken < bytes.size();
    return used;
  });
  return taken;
}

void Console::signal_space() {
  want_space_ = false;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t r = ::write(space_fd_, &one, sizeof one);
}

}  // namespace passvm::virtio
