#include "vmm/signals.h"

#include <fmt/format.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

#include "confine/seccomp.h"

namespace passvm {

SignalWatcher::SignalWatcher(ExitControl& ctl) : ctl_(ctl) {
  sigemptyset(&set_);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR2}) sigaddset(&set_, s);
  if (pthread_sigmask(SIG_BLOCK, &set_, &old_) != 0) throw std::runtime_error("cannot block signals");
  sfd_ = signalfd(-1, &set_, SFD_CLOEXEC);
  const int sfd_error = errno;
  stop_fd_ = eventfd(0, EFD_CLOEXEC);
  if (sfd_ < 0 || stop_fd_ < 0) {
    const std::string why = fmt::format("{}: {}", sfd_ < 0 ? "signalfd" : "eventfd", strerror(sfd_ < 0 ? sfd_error : errno));
    undo();
    throw std::runtime_error(why);
  }
  try {
    thread_ = std::thread([this] { loop(); });
  } catch (...) {
    undo();
    throw;
  }
}

void SignalWatcher::undo() {
  if (sfd_ >= 0) close(sfd_);
  if (stop_fd_ >= 0) close(stop_fd_);
  sfd_ = stop_fd_ = -1;
  pthread_sigmask(SIG_SETMASK, &old_, nullptr);
}

SignalWatcher::~SignalWatcher() {
  uint64_t one = 1;
  if (write(stop_fd_, &one, sizeof one) < 0) {
  }
  thread_.join();
  undo();
}

void SignalWatcher::on_stats(std::function<void()> fn) {
  std::lock_guard g(lock_);
  on_stats_ = std::move(fn);
}

void SignalWatcher::loop() {
  try {
    confine::enter(confine::ThreadClass::Signals, "pv-signals");
  } catch (const std::exception& e) {
    // Unconfined it would not run, and nothing would read the signals: the VMM stops, saying why.
    ctl_.request(ExitReason::InternalError, fmt::format("the signal thread cannot start: {}", e.what()));
    return;
  }
  for (;;) {
    pollfd fds[2] = {{sfd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      // Nothing would read the signals any more, and they stay blocked: the VMM stops, saying why.
      ctl_.request(ExitReason::InternalError, fmt::format("the signal thread stopped: poll: {}", strerror(errno)));
      return;
    }
    if (fds[1].revents) return;
    signalfd_siginfo info{};
    if (read(sfd_, &info, sizeof info) != sizeof info) continue;
    if (info.ssi_signo == SIGUSR2) {
      std::lock_guard g(lock_);
      if (on_stats_) on_stats_();
    } else {
      ctl_.request(ExitReason::Signal, strsignal(static_cast<int>(info.ssi_signo)));
    }
  }
}

}  // namespace passvm
