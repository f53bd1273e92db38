#include "devices/cmos_rtc.h"

#include <algorithm>

namespace passvm::devices {

namespace {
constexpr uint8_t kSeconds = 0x00, kSecondsAlarm = 0x01, kMinutes = 0x02, kMinutesAlarm = 0x03, kHours = 0x04,
                  kHoursAlarm = 0x05, kWeekday = 0x06, kDay = 0x07, kMonth = 0x08,
                  kYear = 0x09, kStatusA = 0x0a, kStatusB = 0x0b, kStatusC = 0x0c, kStatusD = 0x0d;
constexpr uint8_t kStatusADivider = 0x26;  // 32.768 kHz time base, 1024 Hz periodic rate
constexpr uint8_t kStatusAUip = 0x80;
constexpr uint8_t kStatusB24Hour = 0x02, kStatusBBinary = 0x04, kStatusBSet = 0x80;
constexpr std::time_t kSecondsPerDay = 24 * 60 * 60;
// Status B's interrupt enables and status C's flags share bit positions; IRQF is set while any enabled
// flag is.
constexpr uint8_t kUpdate = 0x10, kAlarm = 0x20, kPeriodic = 0x40, kIrqf = 0x80;
constexpr uint8_t kAlarmDontCare = 0xc0;  // an alarm byte of 0xc0-0xff matches every value
constexpr uint8_t kStatusBWritable = 0xff & ~0x08;  // bit 3 (square wave) is not implemented
constexpr uint8_t kStatusDValidRam = 0x80;
}  // namespace

CmosRtc::CmosRtc(Clock clock, Irq irq) : clock_(std::move(clock)), irq_(std::move(irq)) {
  ram_[kStatusA] = kStatusADivider;
  ram_[kStatusB] = kStatusB24Hour;
  ram_[kStatusD] = kStatusDValidRam;
  // glibc reads /etc/localtime at its first time conversion, gmtime_r included. Here, during setup,
  // rather than on the vCPU that first reads the clock, whose seccomp filter does not open files.
  tzset();
  last_tick_ = std::chrono::system_clock::to_time_t(clock_());
}

bool CmosRtc::update_in_progress(std::chrono::system_clock::time_point now) const {
  if (ram_[kStatusB] & kStatusBSet) return false;  // SET stops the update cycle
  auto since = now.time_since_epoch();
  return since - std::chrono::floor<std::chrono::seconds>(since) >= std::chrono::seconds(1) - kUpdateLead;
}

void CmosRtc::tick() {
  std::lock_guard g(lock_);
  std::time_t now = std::chrono::system_clock::to_time_t(clock_());
  if (now == last_tick_) return;
  // The seconds since the last tick; after a clock stepped back, only this one. A day holds every time
  // an alarm can name.
  std::time_t from = now > last_tick_ ? std::max(last_tick_ + 1, now - kSecondsPerDay + 1) : now;
  last_tick_ = now;
  if (ram_[kStatusB] & kStatusBSet) return;  // the guest is setting the time: updates are stopped
  // An update cycle ended. Seconds skipped by a late tick (the control loop busy with a hot-unplug) are
  // one update, as the guest learns the time from the registers, not by counting interrupts; but an
  // alarm in them still fires, as Linux sets one-shot alarms and would otherwise wait a day.
  ram_[kStatusC] |= kUpdate;
  for (std::time_t t = from; t <= now && !(ram_[kStatusC] & kAlarm); t++) {
    std::tm tm{};
    gmtime_r(&t, &tm);
    if (alarm_matches(tm)) ram_[kStatusC] |= kAlarm;
  }
  update_irq();
}

void CmosRtc::update_irq() {
  bool pending = (ram_[kStatusC] & ram_[kStatusB] & (kUpdate | kAlarm | kPeriodic)) != 0;
  ram_[kStatusC] = static_cast<uint8_t>((ram_[kStatusC] & ~kIrqf) | (pending ? kIrqf : 0));
  // The chip's IRQ output stays asserted until status C is read; the ISA interrupt is edge-triggered,
  // so each new assertion is one interrupt.
  if (pending != line_ && irq_) irq_(pending);
  line_ = pending;
}

bool CmosRtc::alarm_matches(const std::tm& tm) const {
  for (auto [alarm, now] : {std::pair{kSecondsAlarm, kSeconds}, {kMinutesAlarm, kMinutes}, {kHoursAlarm, kHours}}) {
    uint8_t a = ram_[alarm];
    if ((a & kAlarmDontCare) != kAlarmDontCare && a != time_register(now, tm)) return false;
  }
  return true;
}

void CmosRtc::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard g(lock_);
  for (size_t i = 0; i < data.size(); i++) data[i] = offset + i == 1 ? read_data() : 0xff;  // index port is write-only
}

void CmosRtc::write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard g(lock_);
  for (size_t i = 0; i < data.size(); i++) {
    if (offset + i == 0)
      index_ = data[i] & 0x7f;  // bit 7 masks NMI on real boards; nothing to mask here
    else if (offset + i == 1)
      write_data(data[i]);
  }
}

uint8_t CmosRtc::encode(int value) const {
  if (ram_[kStatusB] & kStatusBBinary) return static_cast<uint8_t>(value);
  return static_cast<uint8_t>((value / 10) << 4 | value % 10);
}

uint8_t CmosRtc::time_register(uint8_t index, const std::tm& tm) const {
  switch (index) {
    case kSeconds: return encode(tm.tm_sec > 59 ? 59 : tm.tm_sec);
    case kMinutes: return encode(tm.tm_min);
    default: {
      if (ram_[kStatusB] & kStatusB24Hour) return encode(tm.tm_hour);
      int h12 = tm.tm_hour % 12 == 0 ? 12 : tm.tm_hour % 12;
      return static_cast<uint8_t>(encode(h12) | (tm.tm_hour >= 12 ? 0x80 : 0));
    }
  }
}

uint8_t CmosRtc::read_data() {
  const auto at = clock_();
  std::time_t now = std::chrono::system_clock::to_time_t(at);
  std::tm tm{};
  gmtime_r(&now, &tm);
  switch (index_) {
    case kSeconds:
    case kMinutes:
    case kHours: return time_register(index_, tm);
    case kWeekday: return encode(tm.tm_wday + 1);
    case kDay: return encode(tm.tm_mday);
    case kMonth: return encode(tm.tm_mon + 1);
    case kYear: return encode((tm.tm_year + 1900) % 100);
    case kCmosCenturyRegister: return encode((tm.tm_year + 1900) / 100);
    case kStatusA: return static_cast<uint8_t>(kStatusADivider | (update_in_progress(at) ? kStatusAUip : 0));
    case kStatusC: {
      uint8_t v = ram_[kStatusC];  // interrupt flags, cleared by reading, and the line with them
      ram_[kStatusC] = 0;
      update_irq();
      return v;
    }
    case kStatusD: return kStatusDValidRam;
    default: return ram_[index_];
  }
}

void CmosRtc::write_data(uint8_t value) {
  switch (index_) {
    case kSeconds:
    case kMinutes:
    case kHours:
    case kWeekday:
    case kDay:
    case kMonth:
    case kYear:
    case kCmosCenturyRegister:
    case kStatusA:
    case kStatusC:
    case kStatusD: break;
    case kStatusB:
      // SET stops the update cycle and clears UIE (the datasheet's rule; Linux sets it around writing
      // the time).
      if (value & kStatusBSet) value &= static_cast<uint8_t>(~kUpdate);
      ram_[kStatusB] = value & kStatusBWritable;
      update_irq();  // enabling an interrupt whose flag is already set asserts the line at once
      break;
    default: ram_[index_] = value; break;
  }
}

}  // namespace passvm::devices
