// vmm: SignalWatcher. The signals that stop passvm (SIGINT, SIGTERM, SIGHUP) and SIGUSR2, which
// prints the counters, are blocked in every thread and read from a signalfd by one thread of their
// own, so no handler ever runs inside device or KVM code. Create it before any other thread (they
// inherit the blocked mask); the destructor restores the mask.
#pragma once

#include <signal.h>

#include <functional>
#include <mutex>
#include <thread>

#include "vmm/exit_control.h"

namespace passvm {

class SignalWatcher {
 public:
  explicit SignalWatcher(ExitControl& ctl);
  ~SignalWatcher();
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

  // What SIGUSR2 runs (on the watcher's thread); until set, SIGUSR2 is ignored.
  void on_stats(std::function<void()> fn);

 private:
  void loop();
  void undo();  // closes the fds and restores the mask

  ExitControl& ctl_;
  std::mutex lock_;
  std::function<void()> on_stats_;
  sigset_t set_{}, old_{};
  int sfd_ = -1, stop_fd_ = -1;
  std::thread thread_;
};

}  // namespace passvm
