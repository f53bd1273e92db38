// vmm: why and when the machine stops.
//
// Any thread (a vCPU that hit a triple fault, the ACPI power-off register, a
// signal handler's helper thread) asks the machine to stop with a reason; the
// first reason wins. The control loop (vmm.h) is woken by on_request(), then stops the vCPUs and
// tears everything down. Exit codes are part of the CLI contract (README).
#pragma once

#include <functional>
#include <mutex>
#include <string>

namespace passvm {

enum class ExitReason {
  PowerOff = 0,       // guest powered off: exit status 0
  Reset = 1,          // guest asked for a reset (passvm does not reboot in place)
  TripleFault = 2,    // guest shut down by triple fault
  InternalError = 3,  // KVM or passvm failed while the guest ran
  Signal = 4,         // SIGINT/SIGTERM
  SetupFailed = 5,    // setup that goes on while the guest starts failed (guest RAM's DMA mapping)
  GuestPanic = 6,     // the guest kernel said through pvpanic that it panicked
};

inline int exit_status(ExitReason r) {
  switch (r) {
    case ExitReason::PowerOff: return 0;
    case ExitReason::Reset: return 2;
    case ExitReason::TripleFault: return 3;
    case ExitReason::InternalError: return 4;
    case ExitReason::Signal: return 5;
    case ExitReason::SetupFailed: return 1;
    case ExitReason::GuestPanic: return 7;  // 6 is a forbidden system call (confine/)
  }
  return 4;
}

class ExitControl {
 public:
  // Records the first reason; later requests are ignored. Safe from any thread (not from a signal handler).
  void request(ExitReason reason, std::string detail = {}) {
    std::function<void()> hook;
    {
      std::lock_guard g(lock_);
      if (requested_) return;
      requested_ = true;
      reason_ = reason;
      detail_ = std::move(detail);
      hook = on_request_;
    }
    if (hook) hook();
  }
  // Runs (on the requesting thread, without this object's lock) after the first request: a waiter
  // that sleeps on something else of its own is woken this way. Set it before anyone may request.
  void on_request(std::function<void()> hook) {
    std::lock_guard g(lock_);
    on_request_ = std::move(hook);
  }
  bool requested() {
    std::lock_guard g(lock_);
    return requested_;
  }
  ExitReason reason() {
    std::lock_guard g(lock_);
    return reason_;
  }
  std::string detail() {
    std::lock_guard g(lock_);
    return detail_;
  }

 private:
  std::mutex lock_;
  bool requested_ = false;
  ExitReason reason_ = ExitReason::PowerOff;
  std::string detail_;
  std::function<void()> on_request_;
};

}  // namespace passvm
