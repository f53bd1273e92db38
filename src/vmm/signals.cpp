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

#include "confine/seccomp.h"

namespace passvm {

SignalWatcher::SignalWatcher(ExitControl& ctl) : ctl_(ctl) {
  sigemptyset(&set_);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR2}) sigaddset(&set_, s);
  if (pthread_sigmask(SIG_BLOCK, &set_, &old_) != 0) throw std::runtime_error("cannot block signals");
  sfd_ = signalfd(-1, &set_, SFD_CLOEXEC);
  stop_fd_ = eventfd(0, EFD_CLOEXEC);
  if (sfd_ < 0 || stop_fd_ < 0) throw std::runtime_error(fmt::format("signalfd: {}", strerror(errno)));
  thread_ = std::thread([this] { loop(); });
}

SignalWatcher::~SignalWatcher() {
  uint64_t one = 1;
  if (write(stop_fd_, &one, sizeof one) < 0) {
  }
  thread_.join();
  close(sfd_);
  close(stop_fd_);
  pthread_sigmask(SIG_SETMASK, &old_, nullptr);
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
