#include "devices/uart16550.h"

#include <cstdio>
#include <exception>
#include <string>

#include <fmt/format.h>

namespace passvm::devices {

namespace {

enum Reg : uint64_t { kData = 0, kIer = 1, kIir = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6, kScr = 7 };

constexpr uint8_t kIerRda = 0x01, kIerThre = 0x02, kIerRls = 0x04, kIerMsi = 0x08;
constexpr uint8_t kIirNone = 0x01, kIirRls = 0x06, kIirRda = 0x04, kIirTimeout = 0x0c, kIirThre = 0x02,
                  kIirMsi = 0x00, kIirFifo = 0xc0;
constexpr uint8_t kFcrEnable = 0x01, kFcrClearRx = 0x02;
constexpr uint8_t kLcrDlab = 0x80;
constexpr uint8_t kMcrDtr = 0x01, kMcrRts = 0x02, kMcrOut1 = 0x04, kMcrOut2 = 0x08, kMcrLoop = 0x10;
constexpr uint8_t kLsrDr = 0x01, kLsrOe = 0x02, kLsrThre = 0x20, kLsrTemt = 0x40;
constexpr uint8_t kMsrCts = 0x10, kMsrDsr = 0x20, kMsrRi = 0x40, kMsrDcd = 0x80;
constexpr uint8_t kTriggerLevels[4] = {1, 4, 8, 14};
constexpr size_t kOutputBuffer = 4096;

}  // namespace

Uart16550::Uart16550(ConsoleOutput* output, std::function<void(bool)> irq) : output_(output), irq_(std::move(irq)) {
  if (output_) listener_ = output_->on_room([this] { output_has_room(); });
}

Uart16550::~Uart16550() {
  if (output_) output_->remove_listener(listener_);
  flush_output();
}

void Uart16550::output_has_room() {
  std::lock_guard g(lock_);
  flush_output();
  update_irq();
}

// Busy while a FIFO's load would not fit: a driver that saw THRE writes up to 16 bytes without looking
// again (Linux's 8250 tty output does), and those must not be lost.
bool Uart16550::transmitter_busy() const { return out_.size() + kFifoSize > kOutputBuffer; }

void Uart16550::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard g(lock_);
  if (data.size() != 1 || offset != kLsr) flush_output();
  for (size_t i = 0; i < data.size(); i++) data[i] = read_register((offset + i) % kRegisterCount);
  update_irq();
}

void Uart16550::write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard g(lock_);
  if (data.size() != 1 || offset != kData || (lcr_ & kLcrDlab)) flush_output();
  for (size_t i = 0; i < data.size(); i++) write_register((offset + i) % kRegisterCount, data[i]);
  update_irq();
}

void Uart16550::flush() {
  std::lock_guard g(lock_);
  flush_output();
  update_irq();
}

std::string Uart16550::state() {
  std::lock_guard g(lock_);
  uint8_t iir = static_cast<uint8_t>(interrupt_id() | (fifo_enabled_ ? kIirFifo : 0));
  char text[240];
  std::snprintf(text, sizeof text,
                "IER 0x%02x IIR 0x%02x LCR 0x%02x MCR 0x%02x LSR 0x%02x, THRE %s, line %s, %zu bytes received%s",
                ier_, iir, lcr_, mcr_, line_status(), thre_pending_ ? "pending" : "not pending",
                irq_level_ ? "high" : "low", rx_.size(),
                transmitter_busy() ? ", transmitter busy (the console's reader does not keep up)" : "");
  std::string out = text;
  if (lost_ > 0) out += ", " + std::to_string(lost_) + " bytes written while busy were lost";
  if (!batching_error_.empty()) out += ", " + batching_error_;
  return out;
}

void Uart16550::set_tx_batching(std::function<void(bool)> fn) {
  std::lock_guard g(lock_);
  tx_batching_ = std::move(fn);
  batching_told_ = false;
  batching_error_.clear();
  tell_batching(batching_allowed());
}

void Uart16550::tell_batching(bool allowed) {
  if (!tx_batching_) return;
  // Batching only saves exits: when KVM refuses to change it, the UART goes on without changing it again
  // (left on, a write's output and THRE wait for the next exit or the periodic flush) and says why.
  try {
    tx_batching_(allowed);
    batching_told_ = allowed;
  } catch (const std::exception& e) {
    batching_error_ = fmt::format("transmit batching left {}: {}", batching_told_ ? "on" : "off", e.what());
    tx_batching_ = nullptr;
  }
}

bool Uart16550::batching_allowed() const { return !(ier_ & kIerThre) && !(mcr_ & kMcrLoop); }

void Uart16550::update_batching() {
  if (tx_batching_ && batching_allowed() != batching_told_) tell_batching(!batching_told_);
}

size_t Uart16550::receive(std::span<const uint8_t> bytes) {
  std::lock_guard g(lock_);
  size_t cap = fifo_enabled_ ? kFifoSize : 1;
  size_t n = 0;
  while (n < bytes.size() && rx_.size() < cap) rx_.push_back(bytes[n++]);
  room_.offered(bytes.size(), n);
  update_irq();
  return n;
}

uint8_t Uart16550::read_register(uint64_t reg) {
  bool dlab = lcr_ & kLcrDlab;
  switch (reg) {
    case kData: {
      if (dlab) return dll_;
      if (rx_.empty()) return 0;
      uint8_t b = rx_.front();
      rx_.pop_front();
      room_.room();
      return b;
    }
    case kIer: return dlab ? dlm_ : ier_;
    case kIir: {
      uint8_t id = interrupt_id();
      if (id == kIirThre) thre_pending_ = false;  // reading IIR acknowledges THRE when it is the source
      return static_cast<uint8_t>(id | (fifo_enabled_ ? kIirFifo : 0));
    }
    case kLcr: return lcr_;
    case kMcr: return mcr_;
    case kLsr: {
      uint8_t lsr = line_status();
      line_errors_ = 0;
      return lsr;
    }
    case kMsr: {
      uint8_t msr = static_cast<uint8_t>(modem_status_lines() | msr_delta_);
      msr_delta_ = 0;
      return msr;
    }
    default: return scr_;
  }
}

void Uart16550::write_register(uint64_t reg, uint8_t value) {
  bool dlab = lcr_ & kLcrDlab;
  switch (reg) {
    case kData:
      if (dlab) {
        dll_ = value;
      } else {
        transmit(value);
        thre_pending_ = !transmitter_busy();  // the holding register is empty again at once, unless busy
      }
      break;
    case kIer:
      if (dlab) {
        dlm_ = value;
      } else {
        // Enabling the THRE interrupt while the holding register is empty raises it immediately.
        if ((value & kIerThre) && !(ier_ & kIerThre) && !transmitter_busy()) thre_pending_ = true;
        ier_ = value & 0x0f;
        update_batching();
      }
      break;
    case kIir: {  // FCR
      bool enable = value & kFcrEnable;
      if (enable != fifo_enabled_ || (value & kFcrClearRx)) {
        rx_.clear();
        room_.room();
      }
      fifo_enabled_ = enable;
      rx_trigger_ = kTriggerLevels[value >> 6];
      break;
    }
    case kLcr: lcr_ = value; break;
    case kMcr: {
      uint8_t before = modem_status_lines();
      mcr_ = value & 0x1f;
      update_batching();
      uint8_t after = modem_status_lines();
      uint8_t changed = before ^ after;
      if (changed & kMsrCts) msr_delta_ |= 0x01;
      if (changed & kMsrDsr) msr_delta_ |= 0x02;
      if ((before & kMsrRi) && !(after & kMsrRi)) msr_delta_ |= 0x04;  // trailing edge of ring
      if (changed & kMsrDcd) msr_delta_ |= 0x08;
      break;
    }
    case kLsr:
    case kMsr: break;  // factory-test writes: ignored
    default: scr_ = value; break;
  }
}

void Uart16550::transmit(uint8_t byte) {
  if (mcr_ & kMcrLoop) {
    push_rx(byte);
    return;
  }
  if (!output_) {
    transmitted_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (out_.size() >= kOutputBuffer) {  // beyond the FIFO's load after THRE: the guest ignored LSR
    lost_++;
    return;
  }
  transmitted_.fetch_add(1, std::memory_order_relaxed);
  out_.push_back(static_cast<char>(byte));
  if (byte == '\n' || out_.size() >= kOutputBuffer) flush_output();
}

void Uart16550::flush_output() {
  if (out_.empty() || !output_) return;
  const bool was_busy = transmitter_busy();
  out_.erase(0, output_->write(out_));
  // Whoever flushed (the output's listener, the control loop, a register access), the transmitter
  // emptying is a THRE event; the caller updates the line.
  if (was_busy && !transmitter_busy()) thre_pending_ = true;
}

uint8_t Uart16550::line_status() const {
  const uint8_t tx = transmitter_busy() ? 0 : kLsrThre | kLsrTemt;
  return static_cast<uint8_t>(tx | line_errors_ | (rx_.empty() ? 0 : kLsrDr));
}

void Uart16550::push_rx(uint8_t byte) {
  size_t cap = fifo_enabled_ ? kFifoSize : 1;
  if (rx_.size() >= cap) {
    line_errors_ |= kLsrOe;
    return;
  }
  rx_.push_back(byte);
}

// Lines seen by the UART: in loopback the MCR outputs come back; otherwise a terminal that is always ready.
uint8_t Uart16550::modem_status_lines() const {
  if (!(mcr_ & kMcrLoop)) return kMsrCts | kMsrDsr | kMsrDcd;
  uint8_t lines = 0;
  if (mcr_ & kMcrRts) lines |= kMsrCts;
  if (mcr_ & kMcrDtr) lines |= kMsrDsr;
  if (mcr_ & kMcrOut1) lines |= kMsrRi;
  if (mcr_ & kMcrOut2) lines |= kMsrDcd;
  return lines;
}

uint8_t Uart16550::interrupt_id() const {
  if ((ier_ & kIerRls) && line_errors_) return kIirRls;
  if ((ier_ & kIerRda) && !rx_.empty())
    return fifo_enabled_ && rx_.size() < rx_trigger_ ? kIirTimeout : kIirRda;
  if ((ier_ & kIerThre) && thre_pending_) return kIirThre;
  if ((ier_ & kIerMsi) && msr_delta_) return kIirMsi;
  return kIirNone;
}

void Uart16550::update_irq() {
  bool level = interrupt_id() != kIirNone;
  if (level == irq_level_) return;
  irq_level_ = level;
  if (irq_) irq_(level);
}

}  // namespace passvm::devices
