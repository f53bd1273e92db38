// devices: I8042, the PS/2 controller at 0x60 (data) and 0x64 (command/status).
//
// passvm has no keyboard or mouse; the controller is here so that the guest
// can reset the machine the PC way: command 0xFE (or another pulse command
// with bit 0 clear), or an output port written with its reset bit low. The FADT does not announce
// it, so Linux does not probe it; a guest that probes anyway (i8042.nopnp,
// other systems) gets prompt answers instead of waiting out timeouts: the controller
// commands it uses (read/write command byte, self tests, port enable/disable,
// loopback writes) answer as a real 8042 with nothing plugged in would, and
// bytes sent to the absent devices are refused with 0xFE. The optional IRQ
// callbacks (IRQ 1 keyboard, IRQ 12 aux) follow "output buffer full" when
// the command byte enables them. Register it for 5 bytes at 0x60: 0x61 is the
// PIT's speaker port (KVM's in-kernel PIT answers it), 0x62/0x63 read as ones.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>

#include "bus/bus.h"

namespace passvm::devices {

class I8042 : public BusDevice {
 public:
  static constexpr uint64_t kSize = 5;

  explicit I8042(std::function<void()> on_reset, std::function<void(bool)> kbd_irq = {},
                 std::function<void(bool)> aux_irq = {});

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  struct Out {
    uint8_t byte;
    bool aux;
  };
  uint8_t status() const;
  uint8_t read_data();
  bool command(uint8_t cmd);  // returns true when the guest reset the machine
  bool data(uint8_t value);   // the same
  // The chip holds one byte; a few more are kept for bursts (Linux's i8042_flush reads up to 16), and a
  // guest that writes without reading must not grow passvm's memory: beyond them bytes are dropped.
  static constexpr size_t kMaxOut = 16;
  void push(uint8_t byte, bool aux) {
    if (out_.size() < kMaxOut) out_.push_back({byte, aux});
  }
  void update_irqs();

  std::function<void()> on_reset_;
  std::function<void(bool)> kbd_irq_, aux_irq_;
  std::mutex lock_;
  std::deque<Out> out_;
  uint8_t ctr_;           // the "command byte"
  uint8_t pending_ = 0;   // controller command waiting for its data byte
  bool last_was_command_ = false;
  bool kbd_level_ = false, aux_level_ = false;
};

// Port 0x80: POST codes and Linux's I/O delay writes. Keeps the last byte so reads are stable.
class PostPort : public BusDevice {
 public:
  void read(uint64_t, std::span<uint8_t> data) override {
    std::lock_guard g(lock_);
    for (auto& b : data) b = last_;
  }
  void write(uint64_t, std::span<const uint8_t> data) override {
    std::lock_guard g(lock_);
    if (!data.empty()) last_ = data.back();
  }

 private:
  std::mutex lock_;
  uint8_t last_ = 0;
};

}  // namespace passvm::devices
