// devices: CmosRtc, the MC146818 real-time clock and CMOS memory at ports 0x70/0x71.
//
// Linux reads the wall-clock time here at boot. The time always comes from
// the host clock (UTC) at the moment of the read. Status A's "update in
// progress" (UIP) is set in the last 2 ms of every second, as the chip sets it
// 244 us before each update: a guest that reads UIP clear may read all the time
// registers within that long and get one consistent time. Linux before 5.19
// checks UIP once and then reads them, and `hwclock --directisa` times a
// second by UIP's edges; with UIP never set the first could read 22:59:59 as
// 23:59:59 across an hour's turn and the second waited in vain. The lead is
// wider than the chip's because each register read is two exits, slow in a
// nested guest. The update itself is instant. The format follows
// status register B (BCD and 24-hour by default). Writes to the time
// registers are accepted and ignored: the host owns the time. Other CMOS
// bytes are plain memory.
//
// Interrupts: the update-ended and alarm interrupts (status B's UIE and AIE) raise
// the RTC's IRQ when the host clock's second changes, and status C's read lowers
// it, as on the chip. Linux needs them: its RTC core emulates the update
// interrupt (what util-linux `hwclock` waits for) with the alarm, and `rtcwake`
// and wake alarms use it. Nothing in the device keeps time itself: tick() looks
// at the clock, and the VMM's control loop calls it every 50 ms when idle, so an
// interrupt comes about that late after its second; an alarm whose second a late
// tick passed over still fires. The periodic interrupt (PIE) is not raised: Linux
// runs its periodic RTC events on a host timer.
//
// Lifetime: the irq callback must outlive the device; it is called with the
// device's lock held, from the vCPU reading status C or from tick()'s thread.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <functional>
#include <mutex>
#include <span>

#include "bus/bus.h"

namespace passvm::devices {

inline constexpr uint8_t kCmosCenturyRegister = 0x32;  // the FADT's CENTURY field names it

class CmosRtc : public BusDevice {
 public:
  static constexpr uint64_t kSize = 2;  // index port 0x70, data port 0x71

  using Clock = std::function<std::chrono::system_clock::time_point()>;
  using Irq = std::function<void(bool level)>;
  static std::chrono::system_clock::time_point host_clock() { return std::chrono::system_clock::now(); }
  // How long before each second's update UIP is set.
  static constexpr std::chrono::microseconds kUpdateLead{2000};

  // clock returns the current time; tests pass one they move. irq drives the RTC's interrupt line
  // (none: interrupts are flagged in status C but go nowhere).
  explicit CmosRtc(Clock clock = host_clock, Irq irq = {});

  // Raises the update-ended and alarm interrupts due since the last call. Cheap when neither is enabled.
  void tick();

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  uint8_t read_data();
  void write_data(uint8_t value);
  uint8_t encode(int value) const;
  // The time register `index` (seconds, minutes or hours) as the guest reads it at `tm`.
  uint8_t time_register(uint8_t index, const std::tm& tm) const;
  bool alarm_matches(const std::tm& tm) const;
  bool update_in_progress(std::chrono::system_clock::time_point now) const;
  // Sets status C's IRQF from its flags and the enables in status B, and the line with it.
  void update_irq();

  Clock clock_;
  Irq irq_;
  std::mutex lock_;
  uint8_t index_ = 0;
  std::time_t last_tick_ = 0;  // the second tick() last looked at
  bool line_ = false;
  std::array<uint8_t, 128> ram_{};
};

}  // namespace passvm::devices
