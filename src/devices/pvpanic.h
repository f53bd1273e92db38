// devices: Pvpanic, the one-port device through which a guest kernel says that it panicked.
//
// QEMU's pvpanic protocol at layout::kPvpanicPort (0x505), described to the guest in the DSDT as
// "QEMU0001" (Linux's pvpanic-mmio driver binds to it, and to the I/O port form too). A read returns the
// events this device understands; the guest writes one of them from its panic notifier:
//   kPanicked     the guest panicked and leaves what happens next to the host: on_panicked runs
//   kCrashLoaded  the guest panicked and boots its own crash kernel (kdump): on_crash_loaded runs, and
//                 the guest must keep running (Linux says so only with crash_kexec_post_notifiers;
//                 otherwise it jumps to its crash kernel before the notifiers, without a word)
// Bits it does not understand are ignored, as the protocol asks. Each event is reported once per
// device: a guest that writes again (a panic inside its panic path, a loop) makes no more reports.
// Callbacks run on the vCPU thread that wrote, with no lock of this device held.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <span>

#include "bus/bus.h"

namespace passvm::devices {

class Pvpanic : public BusDevice {
 public:
  static constexpr uint64_t kSize = 1;
  static constexpr uint8_t kPanicked = 1u << 0;
  static constexpr uint8_t kCrashLoaded = 1u << 1;

  Pvpanic(std::function<void()> on_panicked, std::function<void()> on_crash_loaded);

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  // The events the guest has sent so far (kPanicked, kCrashLoaded).
  uint8_t events() const { return seen_.load(); }

 private:
  std::function<void()> on_panicked_;
  std::function<void()> on_crash_loaded_;
  std::atomic<uint8_t> seen_{0};
};

}  // namespace passvm::devices
