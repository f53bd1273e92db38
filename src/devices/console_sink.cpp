#include "devices/console_sink.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace passvm::devices {

RoomSignal::RoomSignal(std::string_view owner) {
  fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd_ < 0) throw std::runtime_error(std::string(owner) + ": eventfd: " + std::strerror(errno));
}

RoomSignal::~RoomSignal() { close(fd_); }

void RoomSignal::room() {
  if (!waiting_) return;
  waiting_ = false;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t r = ::write(fd_, &one, sizeof one);
}

}  // namespace passvm::devices
