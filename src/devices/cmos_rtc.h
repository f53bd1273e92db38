// devices: CmosRtc, the MC146818 real-time clock and CMOS memory at ports 0x70/0x71.
//
// Linux reads the wall-clock time here at boot. The time always comes from
// the host clock (UTC) at the moment of the read, and "update in progress" is
// never set, so the guest never waits for an update cycle. The format follows
// status register B (BCD and 24-hour by default). Writes to the time
// registers are accepted and ignored: the host owns the time. Other CMOS
// bytes are plain memory.
#pragma once

#include <array>
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

  // clock returns the current time; tests pass a fixed one.
  explicit CmosRtc(std::function<std::time_t()> clock = [] { return std::time(nullptr); });

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  uint8_t read_data();
  void write_data(uint8_t value);
  uint8_t encode(int value) const;

  std::function<std::time_t()> clock_;
  std::mutex lock_;
  uint8_t index_ = 0;
  std::array<uint8_t, 128> ram_{};
};

}  // namespace passvm::devices
