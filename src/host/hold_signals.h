// host: HoldSignals, a reservation or release carried through whatever the user presses.
//
// Binding and unbinding devices is a sequence of sysfs writes; cut in the middle by Ctrl-C, SIGTERM or
// a hangup, it would leave devices on vfio-pci unrecorded or on no driver at all, with nothing given
// back. While a HoldSignals lives, those signals wait; when it goes, it says that the work was finished
// first, and the signal then ends the process as it would have.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <string>
#include <string_view>

namespace passvm::host {

class HoldSignals {
 public:
  explicit HoldSignals(std::string_view what) : what_(what) {
    sigemptyset(&held_);
    for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&held_, s);
    sigprocmask(SIG_BLOCK, &held_, &before_);
  }
  ~HoldSignals() {
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    for (int s : {SIGINT, SIGTERM, SIGHUP})
      if (sigismember(&pending, s) && !sigismember(&before_, s)) {
        std::string line = "passvm: interrupted: the " + what_ + " was carried through first\n";
        [[maybe_unused]] auto w = ::write(2, line.data(), line.size());
        break;
      }
    sigprocmask(SIG_SETMASK, &before_, nullptr);
  }
  HoldSignals(const HoldSignals&) = delete;
  HoldSignals& operator=(const HoldSignals&) = delete;

 private:
  std::string what_;
  sigset_t held_{}, before_{};
};

}  // namespace passvm::host
