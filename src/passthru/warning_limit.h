// passthru: WarningLimit, what one device says about its interrupts on stderr.
//
// Most of these messages come from something the guest did (enabled MSI while MSI-X was on, unmasked a
// vector the host cannot supply, programmed a message that is no interrupt), and a guest can do it again
// and again, once per exit. The host's logs must not fill up: the first kPrinted messages are printed,
// the rest only counted (--stats: interrupt warnings).
//
// Lifetime: owned by Interrupts, shared by reference with its Vectors; say() is called with the device's
// lock held, count() from anywhere.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace passvm::passthru {

class WarningLimit {
 public:
  static constexpr uint64_t kPrinted = 8;

  explicit WarningLimit(std::string name) : name_(std::move(name)) {}

  void say(const std::string& what) {
    uint64_t n = ++count_;
    if (n <= kPrinted) fmt::print(stderr, "passvm: {}: {}\n", name_, what);
    if (n == kPrinted)
      fmt::print(stderr, "passvm: {}: further interrupt warnings are only counted (--stats: interrupt warnings)\n",
                 name_);
  }
  uint64_t count() const { return count_.load(); }

 private:
  std::string name_;
  std::atomic<uint64_t> count_{0};
};

}  // namespace passvm::passthru
