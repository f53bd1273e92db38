#include "devices/i8042.h"

namespace passvm::devices {

namespace {
constexpr uint8_t kStatusObf = 0x01, kStatusSys = 0x04, kStatusCmd = 0x08, kStatusUnlocked = 0x10,
                  kStatusAuxData = 0x20;
constexpr uint8_t kCtrKbdInt = 0x01, kCtrAuxInt = 0x02, kCtrSys = 0x04, kCtrKbdDisable = 0x10,
                  kCtrAuxDisable = 0x20, kCtrTranslate = 0x40;
constexpr uint8_t kCmdReadCtr = 0x20, kCmdWriteCtr = 0x60, kCmdAuxDisable = 0xa7, kCmdAuxEnable = 0xa8,
                  kCmdAuxTest = 0xa9, kCmdSelfTest = 0xaa, kCmdKbdTest = 0xab, kCmdKbdDisable = 0xad,
                  kCmdKbdEnable = 0xae, kCmdReadOutput = 0xd0, kCmdWriteOutput = 0xd1, kCmdKbdLoop = 0xd2,
                  kCmdAuxLoop = 0xd3, kCmdAuxSend = 0xd4;
constexpr uint8_t kSelfTestOk = 0x55, kPortTestOk = 0x00, kNoDevice = 0xfe;
constexpr uint8_t kOutputPort = 0x03;  // A20 enabled, not in reset
}  // namespace

I8042::I8042(std::function<void()> on_reset, std::function<void(bool)> kbd_irq, std::function<void(bool)> aux_irq)
    : on_reset_(std::move(on_reset)),
      kbd_irq_(std::move(kbd_irq)),
      aux_irq_(std::move(aux_irq)),
      ctr_(kCtrKbdInt | kCtrSys | kCtrAuxDisable | kCtrTranslate) {}

uint8_t I8042::status() const {
  uint8_t s = kStatusSys | kStatusUnlocked;
  if (last_was_command_) s |= kStatusCmd;
  if (!out_.empty()) s = static_cast<uint8_t>(s | kStatusObf | (out_.front().aux ? kStatusAuxData : 0));
  return s;
}

uint8_t I8042::read_data() {
  if (out_.empty()) return 0;
  uint8_t b = out_.front().byte;
  out_.pop_front();
  return b;
}

void I8042::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard g(lock_);
  for (size_t i = 0; i < data.size(); i++) {
    uint64_t at = offset + i;
    data[i] = at == 0 ? read_data() : at == 4 ? status() : 0xff;
  }
  update_irqs();
}

void I8042::write(uint64_t offset, std::span<const uint8_t> data) {
  bool reset = false;
  {
    std::lock_guard g(lock_);
    for (size_t i = 0; i < data.size(); i++) {
      uint64_t at = offset + i;
      if (at == 4) reset |= command(data[i]);
      else if (at == 0) reset |= this->data(data[i]);
    }
    update_irqs();
  }
  if (reset && on_reset_) on_reset_();
}

bool I8042::command(uint8_t cmd) {
  last_was_command_ = true;
  pending_ = 0;
  switch (cmd) {
    case kCmdReadCtr: push(ctr_, false); break;
    case kCmdWriteCtr:
    case kCmdWriteOutput:
    case kCmdKbdLoop:
    case kCmdAuxLoop:
    case kCmdAuxSend: pending_ = cmd; break;
    case kCmdAuxDisable: ctr_ |= kCtrAuxDisable; break;
    case kCmdAuxEnable: ctr_ &= static_cast<uint8_t>(~kCtrAuxDisable); break;
    case kCmdKbdDisable: ctr_ |= kCtrKbdDisable; break;
    case kCmdKbdEnable: ctr_ &= static_cast<uint8_t>(~kCtrKbdDisable); break;
    case kCmdSelfTest: push(kSelfTestOk, false); break;
    case kCmdKbdTest:
    case kCmdAuxTest: push(kPortTestOk, false); break;
    case kCmdReadOutput: push(kOutputPort, false); break;
    default:
      // 0xF0-0xFF pulse the output port's lines whose bits are clear: bit 0 is the CPU's reset line.
      // 0xFE (Linux, most systems) pulses it alone; 0xF0 and the others with bit 0 clear do too.
      if (cmd >= 0xf0 && !(cmd & 0x01)) return true;
      break;
  }
  return false;
}

bool I8042::data(uint8_t value) {
  last_was_command_ = false;
  uint8_t cmd = pending_;
  pending_ = 0;
  switch (cmd) {
    case kCmdWriteCtr: ctr_ = value; break;
    case kCmdWriteOutput: return !(value & 0x01);  // bit 0 low holds the CPU in reset; A20 is always on
    case kCmdKbdLoop: push(value, false); break;
    case kCmdAuxLoop: push(value, true); break;
    case kCmdAuxSend: push(kNoDevice, true); break;
    default: push(kNoDevice, false); break;  // a byte for the keyboard, which is not there
  }
  return false;
}

void I8042::update_irqs() {
  bool has = !out_.empty();
  bool aux = has && out_.front().aux;
  bool kbd_level = has && !aux && (ctr_ & kCtrKbdInt);
  bool aux_level = aux && (ctr_ & kCtrAuxInt);
  if (kbd_level != kbd_level_) {
    kbd_level_ = kbd_level;
    if (kbd_irq_) kbd_irq_(kbd_level);
  }
  if (aux_level != aux_level_) {
    aux_level_ = aux_level;
    if (aux_irq_) aux_irq_(aux_level);
  }
}

}  // namespace passvm::devices
