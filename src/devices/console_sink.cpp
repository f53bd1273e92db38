#include "devices/console_sink.h"

#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace passvm::devices {

namespace {

// The guest output fd that shares its file with passvm's messages (-1: none), and whether the guest's
// last write to it left a line open.
std::atomic<int> shared_guest_fd{-1};
std::atomic<bool> guest_mid_line{false};

// An error drops the rest: neither the guest nor a message may stall on the console. So does an
// interruption: the one signal that interrupts a passvm thread is a vCPU's kick (the others are blocked
// and read from a signalfd), which asks it to stop or pause, and a vCPU blocked here on a terminal or
// pipe that nobody reads must still do so.
void write_all(int fd, const char* data, size_t size) {
  size_t done = 0;
  while (done < size) {
    ssize_t r = ::write(fd, data + done, size - done);
    if (r <= 0) return;
    done += static_cast<size_t>(r);
  }
}

ssize_t write_message(void* cookie, const char* data, size_t size) {
  int fd = static_cast<int>(reinterpret_cast<intptr_t>(cookie));
  if (size > 0 && guest_mid_line.exchange(false)) write_all(fd, "\n", 1);
  // A failed write is reported as all written: a message must not turn into an error of its own.
  write_all(fd, data, size);
  return static_cast<ssize_t>(size);
}

}  // namespace

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

void write_guest_output(int fd, std::string_view bytes) {
  write_all(fd, bytes.data(), bytes.size());
  if (!bytes.empty() && fd >= 0 && fd == shared_guest_fd.load(std::memory_order_relaxed))
    guest_mid_line.store(bytes.back() != '\n', std::memory_order_relaxed);
}

FILE* messages_on_their_own_lines(int guest_fd, int message_fd) {
  struct stat a {}, b {};
  if (fstat(guest_fd, &a) != 0 || fstat(message_fd, &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
    return nullptr;
  cookie_io_functions_t io{};
  io.write = write_message;
  FILE* f = fopencookie(reinterpret_cast<void*>(static_cast<intptr_t>(message_fd)), "w", io);
  if (!f) return nullptr;
  setvbuf(f, nullptr, _IONBF, 0);
  guest_mid_line = false;
  shared_guest_fd = guest_fd;
  return f;
}

}  // namespace passvm::devices
