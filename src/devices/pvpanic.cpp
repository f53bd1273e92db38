#include "devices/pvpanic.h"

#include <algorithm>
#include <utility>

namespace passvm::devices {

Pvpanic::Pvpanic(std::function<void()> on_panicked, std::function<void()> on_crash_loaded)
    : on_panicked_(std::move(on_panicked)), on_crash_loaded_(std::move(on_crash_loaded)) {}

void Pvpanic::read(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), uint8_t{0});
  if (offset == 0 && !data.empty()) data[0] = kPanicked | kCrashLoaded;
}

void Pvpanic::write(uint64_t offset, std::span<const uint8_t> data) {
  if (offset != 0 || data.empty()) return;
  // A write that says both is taken as a crash kernel's: stopping the guest would lose its dump. (Linux
  // sends one or the other.) A crash kernel that panics in turn says PANICKED alone, and that stops it.
  const uint8_t event = (data[0] & kCrashLoaded) ? kCrashLoaded : (data[0] & kPanicked);
  if (event == 0 || (seen_.fetch_or(event) & event) != 0) return;
  const auto& report = event == kCrashLoaded ? on_crash_loaded_ : on_panicked_;
  if (report) report();
}

}  // namespace passvm::devices
