#include "devices/console_input.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "confine/seccomp.h"

namespace passvm::devices {

ConsoleInput::ConsoleInput(int in_fd, ConsoleSink& sink, std::function<void()> on_quit)
    : in_fd_(in_fd), sink_(sink), on_quit_(std::move(on_quit)) {
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd_ < 0) throw std::runtime_error(std::string("console input: eventfd: ") + std::strerror(errno));
  // A terminal whose foreground is another process group (passvm started with `&`): setting its mode,
  // or reading it, would have the kernel stop all of passvm (SIGTTOU, SIGTTIN), the guest and the API
  // with it. Output still goes there; input is left off.
  // (tcgetpgrp fails for a terminal that is not passvm's controlling one: no job control applies there.)
  const bool tty = in_fd_ >= 0 && isatty(in_fd_);
  pid_t foreground = tty ? tcgetpgrp(in_fd_) : -1;
  if (foreground >= 0 && foreground != getpgrp()) {
    background_ = true;
    std::fprintf(stderr, "passvm: the console's terminal is another process group's (passvm runs in the "
                 "background): the guest gets no input from it\n");
  } else if (tty && tcgetattr(in_fd_, &saved_) == 0) {
    terminal_ = true;
    termios raw = saved_;
    cfmakeraw(&raw);
    raw.c_oflag |= OPOST;  // keep "\n" -> "\r\n" for guests that print bare newlines
    raw.c_cc[VMIN] = 1;
    raw.c_cc[VTIME] = 0;
    if (tcsetattr(in_fd_, TCSANOW, &raw) == 0) raw_ = true;
  }
  thread_ = std::thread([this] { run(); });
}

ConsoleInput::~ConsoleInput() {
  stop();
  restore();
  close(stop_fd_);
}

void ConsoleInput::stop() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t r = ::write(stop_fd_, &one, sizeof one);
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void ConsoleInput::restore() {
  if (raw_.exchange(false)) tcsetattr(in_fd_, TCSANOW, &saved_);
}

bool ConsoleInput::filter(const uint8_t* in, size_t n, std::vector<uint8_t>& out) {
  for (size_t i = 0; i < n; i++) {
    uint8_t c = in[i];
    if (escape_seen_) {
      escape_seen_ = false;
      if (c == kQuitKey) return false;
      if (c != kEscape) out.push_back(kEscape);
      out.push_back(c);
    } else if (c == kEscape) {
      escape_seen_ = true;
    } else {
      out.push_back(c);
    }
  }
  return true;
}

void ConsoleInput::run() {
  // An exception leaving a thread ends the process: one from the sink (a device that reports a broken
  // queue on a stderr that cannot be written, say) ends the guest's input only.
  try {
    confine::enter(confine::ThreadClass::Console, "pv-console");
    pump();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "passvm: console input stopped: %s\n", e.what());
  }
}

void ConsoleInput::pump() {
  std::vector<uint8_t> pending;
  std::array<uint8_t, 256> buf{};
  bool input_open = in_fd_ >= 0 && !background_;
  bool said_dropped = false;
  for (;;) {
    // A terminal is read on while the guest takes nothing, so that Ctrl-A x still quits; other input
    // (a pipe, a file) waits for the guest and arrives whole.
    const bool read_in = input_open && (pending.empty() || terminal_);
    std::array<pollfd, 3> fds{{
        {stop_fd_, POLLIN, 0},
        {read_in ? in_fd_ : -1, POLLIN, 0},  // a negative fd is skipped by poll
        {pending.empty() ? -1 : sink_.rx_space_fd(), POLLIN, 0},
    }};
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[0].revents) return;
    if (fds[2].revents & POLLIN) {
      uint64_t count;
      [[maybe_unused]] ssize_t r = ::read(sink_.rx_space_fd(), &count, sizeof count);
    }
    if (fds[1].revents) {
      ssize_t n = ::read(in_fd_, buf.data(), buf.size());
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        input_open = false;  // end of input (or a dead fd): stop polling it, never spin on it
      } else if (terminal_) {
        if (!filter(buf.data(), static_cast<size_t>(n), pending)) {
          if (on_quit_) on_quit_();
          input_open = false;
        }
        if (pending.size() > kTypedAhead) {
          if (!std::exchange(said_dropped, true))
            std::fprintf(stderr, "passvm: the guest is not reading its console: typed input beyond %zu bytes "
                         "is dropped (Ctrl-A x still quits)\n", kTypedAhead);
          pending.resize(kTypedAhead);
        }
      } else {
        pending.insert(pending.end(), buf.begin(), buf.begin() + n);
      }
    }
    if (!pending.empty()) {
      size_t taken = sink_.receive(pending);
      pending.erase(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(taken));
    }
  }
}

}  // namespace passvm::devices
