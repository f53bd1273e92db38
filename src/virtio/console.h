// virtio: Console, a virtio console with one port (the guest's hvc0).
//
// Why it exists: through the 8250 UART every character a guest's kernel prints costs an exit (its
// driver reads the line status register before each one), about 18,500 exits in a boot that prints.
// Linux's virtio console hands its output over in buffers of up to 16 characters, one notification
// each, and a shell's output in whole writes.
//
// Queue 0 receives (host input into buffers the driver posted), queue 1 transmits (the driver's
// buffers handed to a ConsoleOutput, which never blocks). While the console refuses output (its reader
// stalled and its queue is full) the driver's buffers wait in the ring, and the device takes them when
// the console has room: the guest's driver waits, as for a slow line. A buffer is taken whole once there
// is any room, up to kChainSlack beyond the console's capacity (beyond that it is cut: a chain may be
// as large as guest RAM). No multiport, no emergency write,
// no console size. Input arriving before the driver has posted buffers waits in ConsoleInput, which
// rx_space_fd() wakes when the driver posts some.
//
// Lifetime: attach() a transport before the guest runs; the transport (and its lock, under which
// every call here runs) outlives nothing here but the bus registration. The output outlives the
// Console; the Console goes before its transport (it stops listening to the output then).
#pragma once

#include <atomic>
#include <cstdint>
#include <span>

#include "devices/console_output.h"
#include "devices/console_sink.h"
#include "virtio/mmio_transport.h"

namespace passvm::virtio {

class Console : public Device, public devices::ConsoleSink {
 public:
  static constexpr uint32_t kType = 3;
  static constexpr uint16_t kReceiveQueue = 0, kTransmitQueue = 1;
  static constexpr size_t kChainSlack = size_t{64} << 10;

  // Guest output goes to `output` (nullptr drops it).
  explicit Console(devices::ConsoleOutput* output);
  ~Console() override;
  Console(const Console&) = delete;
  Console& operator=(const Console&) = delete;

  void attach(MmioTransport& transport);

  // Device
  uint32_t type() const override { return kType; }
  uint64_t features() const override { return 0; }
  uint16_t queue_count() const override { return 2; }
  void read_config(uint64_t offset, std::span<uint8_t> data) override;
  bool notified(uint16_t index, Queue& queue) override;
  void reset() override;

  // ConsoleSink: host input into the receive queue's buffers.
  size_t receive(std::span<const uint8_t> bytes) override;
  int rx_space_fd() const override { return room_.fd(); }

  // Bytes the guest has written to its console since it was made: whether it printed at all.
  uint64_t transmitted() const { return transmitted_.load(std::memory_order_relaxed); }

 private:
  bool transmit(Queue& queue);

  devices::ConsoleOutput* const output_;
  devices::ConsoleOutput::ListenerId listener_ = 0;
  MmioTransport* transport_ = nullptr;
  devices::RoomSignal room_{"virtio console"};  // under the transport's lock
  std::atomic<uint64_t> transmitted_{0};
};

}  // namespace passvm::virtio
