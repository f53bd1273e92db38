// passthru: WarningLimit, what one device says on stderr about one kind of trouble.
//
// Most of these messages come from something the guest did (placed a BAR where it cannot be mapped,
// enabled MSI while MSI-X was on, unmasked a vector the host cannot supply), and a guest can do it again
// and again, once per exit. The host's logs must not fill up: the first kPrinted messages are printed,
// the rest only counted (in --stats, under the name the owner gives). -v's reports of what the guest
// made passvm do (each BAR placement) are held to a larger number the same way.
//
// Lifetime: owned by what it speaks for (BarMapper's placements; Interrupts', shared by reference with
// its Vectors); say() is called with the device's lock held, count() from anywhere.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "base/eprint.h"

namespace passvm::passthru {

class WarningLimit {
 public:
  static constexpr uint64_t kPrinted = 8;

  // name: the device; the rest: "further <what_follows> are only counted (--stats: <stats_name>)".
  // printed: how many are printed (more for -v's reports, which the user asked for).
  WarningLimit(std::string name, std::string what_follows, std::string stats_name, uint64_t printed = kPrinted)
      : name_(std::move(name)), what_follows_(std::move(what_follows)), stats_name_(std::move(stats_name)),
        printed_(printed) {}

  void say(const std::string& what) {
    uint64_t n = ++count_;
    if (n <= printed_) eprint("passvm: {}: {}\n", name_, what);
    if (n == printed_)
      eprint("passvm: {}: further {} are only counted (--stats: {})\n", name_, what_follows_, stats_name_);
  }
  uint64_t count() const { return count_.load(); }

 private:
  std::string name_, what_follows_, stats_name_;
  uint64_t printed_;
  std::atomic<uint64_t> count_{0};
};

}  // namespace passvm::passthru
