// devices: emulated platform devices of the PC that every guest expects.
//
// These are the few legacy pieces a Linux guest touches besides the PCI bus:
// the COM1 serial port (its console), ACPI fixed-hardware power management
// (to power off), the CMOS RTC (wall-clock time), the i8042 (reset, and
// probing that must not hang) and POST port 0x80 (I/O delay writes). Each is a
// BusDevice with its own lock, because two vCPUs may touch it at once, and
// reports interrupts through std::function callbacks so nothing here depends
// on KVM.
//
// Uart16550 is a 16550A: 16-byte receive FIFO, interrupt identification with
// the datasheet's priorities, divisor latch, scratch register, loopback.
// Transmission is instant (the guest never waits for the baud rate) while the
// console takes the output: it goes to a ConsoleOutput, which never blocks.
// When that refuses it (its reader stalled and its queue is full), the UART
// keeps up to 4 KiB, showing the transmitter busy (LSR THRE and TEMT clear, no
// THRE interrupt) once less than a FIFO's load (16 bytes) of that is left,
// until the console takes it, as a real UART on a line with flow control: the
// guest's driver waits, and a byte it writes beyond the FIFO's load regardless
// is lost (counted in state()). Output is collected in lines
// rather than handed over per character: at a newline, when 4 KiB are
// collected, at any register access other than the per-character pair (data
// write, LSR read; Linux's console write ends by restoring IER, its tty output
// by switching the THRE interrupt), and at flush(), which the VMM calls
// periodically and at stop. The IRQ
// callback gets the line level, "an enabled interrupt is pending", and is
// called only when it changes; it must not call back into the UART.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <string>

#include "bus/bus.h"
#include "devices/console_output.h"
#include "devices/console_sink.h"

namespace passvm::devices {

class Uart16550 : public BusDevice, public ConsoleSink {
 public:
  static constexpr size_t kFifoSize = 16;
  static constexpr uint64_t kRegisterCount = 8;  // register it on the port bus for 8 bytes

  // Guest output goes to `output` (nullptr drops it), which must outlive the UART. irq receives the line
  // level on every change; it is also called on the output's writer thread.
  Uart16550(ConsoleOutput* output, std::function<void(bool level)> irq);
  ~Uart16550() override;
  Uart16550(const Uart16550&) = delete;
  Uart16550& operator=(const Uart16550&) = delete;

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  // Transmit batching: fn(true) says that writes to the data register (offset 0) may be queued and
  // delivered later (Vm::coalesce_pio), fn(false) that each must exit again. Batching is safe while
  // the THRE interrupt is disabled and loopback is off: then a write's only effect is the output, which
  // the guest can only observe by reading a register, and a read exits and delivers queued writes
  // first. (In loopback a write raises the receive interrupt, which must not wait for the next exit.)
  // Linux's console output polls with the interrupt off: one exit per character instead of two. Calls
  // fn with the current state at once, and again whenever it changes. When fn throws, the state it was
  // asked to leave stays and fn is not called again (state() says so).
  void set_tx_batching(std::function<void(bool allowed)> fn);

  // Host input: puts as many bytes as fit into the receive FIFO and returns how many. When some
  // did not fit, rx_space_fd() (an eventfd) becomes readable once the guest has read a byte.
  size_t receive(std::span<const uint8_t> bytes) override;
  int rx_space_fd() const override { return room_.fd(); }

  // Writes the buffered output now.
  void flush();

  // Bytes the guest has sent out (loopback aside) since the UART was made: whether it printed at all.
  uint64_t transmitted() const { return transmitted_.load(std::memory_order_relaxed); }

  // The registers as the guest would read them, without a read's side effects, and the interrupt line:
  // "IER 0x0f IIR 0xc2 LCR 0x03 MCR 0x0b LSR 0x60, THRE pending, line high, 0 bytes received". For
  // --stats and SIGUSR2: a guest whose console stalls shows here whether it waits for an interrupt.
  std::string state();

 private:
  uint8_t read_register(uint64_t reg);
  void write_register(uint64_t reg, uint8_t value);
  void transmit(uint8_t byte);
  void flush_output();
  uint8_t line_status() const;
  bool transmitter_busy() const;  // the console refused what the UART holds, and it holds its fill
  void output_has_room();         // the output's listener
  void push_rx(uint8_t byte);
  uint8_t interrupt_id() const;
  uint8_t modem_status_lines() const;
  void update_irq();
  bool batching_allowed() const;
  void update_batching();  // tells tx_batching_ when batching_allowed() changed
  void tell_batching(bool allowed);

  ConsoleOutput* const output_;
  ConsoleOutput::ListenerId listener_ = 0;
  const std::function<void(bool)> irq_;
  std::function<void(bool)> tx_batching_;
  bool batching_told_ = false;  // what tx_batching_ was last told
  std::string batching_error_;  // why tx_batching_ was given up, for state()

  std::mutex lock_;
  std::deque<uint8_t> rx_;
  std::string out_;  // guest output not yet handed to output_
  uint64_t lost_ = 0;  // bytes the guest wrote while the transmitter was busy
  std::atomic<uint64_t> transmitted_{0};
  uint8_t ier_ = 0, lcr_ = 0, mcr_ = 0, scr_ = 0;
  uint8_t dll_ = 0x0c, dlm_ = 0;  // 9600 baud, what firmware would leave
  uint8_t line_errors_ = 0;       // LSR overrun bit, cleared by reading LSR
  uint8_t msr_delta_ = 0;         // MSR bits 0-3, cleared by reading MSR
  bool fifo_enabled_ = false;
  uint8_t rx_trigger_ = 1;
  bool thre_pending_ = false;
  RoomSignal room_{"serial port"};
  bool irq_level_ = false;
};

}  // namespace passvm::devices
