// virtio: MmioTransport, a virtio device's registers at a fixed guest-physical address (virtio-mmio,
// version 2: virtio 1.x, section 4.2).
//
// A transport carries one Device: it keeps the registers the driver programs (status, features,
// queue addresses, interrupt status), its queues, and the interrupt line, and hands the device a
// queue when the driver notifies it or when host input arrives (with_queue). The guest finds it
// through the DSDT (a device with _HID "LNRO0005", which Linux's virtio_mmio driver claims), so no
// PCI bus and no MSI-X are involved: the interrupt is an IOAPIC pin, reported as a level (interrupt
// status not zero) to a callback, like the UART's.
//
// A notification is served on the vCPU that wrote it, before the vCPU returns to the guest: Linux's
// virtio console waits for its output buffer to come back by polling the used ring, so it must be
// there when the guest resumes. Everything happens under one lock, which the Device's callbacks run
// under; two vCPUs and a host input thread may call at once.
//
// Lifetime: the transport must outlive its bus registration; the Device and GuestMemory outlive the
// transport.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "bus/bus.h"
#include "memory/guest_memory.h"
#include "virtio/queue.h"

namespace passvm::virtio {

inline constexpr uint64_t kFeatureVersion1 = uint64_t{1} << 32;

// What a virtio device model implements; the transport calls it with its lock held.
class Device {
 public:
  virtual ~Device() = default;
  virtual uint32_t type() const = 0;       // the virtio device ID (3: console)
  virtual uint64_t features() const = 0;   // device-specific feature bits offered
  virtual uint16_t queue_count() const = 0;
  virtual void read_config(uint64_t offset, std::span<uint8_t> data) = 0;  // beyond its end: zeros
  // The driver notified queue `index`: take its buffers. Returns true when some were used.
  virtual bool notified(uint16_t index, Queue& queue) = 0;
  virtual void reset() = 0;  // the driver reset the device, or the transport gave up on it
};

class MmioTransport : public BusDevice {
 public:
  static constexpr uint64_t kSize = 0x200;  // registers up to 0x100, then the device's config space

  MmioTransport(const GuestMemory& mem, Device& device, std::function<void(bool level)> irq);

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  // Host-side work on queue `index` (input that arrived): runs fn under the lock with the queue, or with
  // nullptr when the driver has not enabled it (or broke it), raising the interrupt if fn returns true.
  void with_queue(uint16_t index, const std::function<bool(Queue*)>& fn);

  // The status register as the driver last wrote it (for messages and tests).
  uint32_t status();
  // Why the transport stopped serving the driver, empty while all is well.
  std::string error();

 private:
  uint32_t read_register(uint64_t offset);
  void write_register(uint64_t offset, uint32_t value);
  Queue* selected();
  void reset_locked();
  void used_buffers(Queue& q);
  void set_interrupt(uint32_t bits);
  void update_irq();
  void fail(const std::string& why);

  const GuestMemory& mem_;
  Device& device_;
  const std::function<void(bool)> irq_;

  std::mutex lock_;
  std::vector<std::unique_ptr<Queue>> queues_;
  uint32_t status_ = 0;
  uint32_t device_features_sel_ = 0, driver_features_sel_ = 0;
  uint64_t driver_features_ = 0;
  uint32_t queue_sel_ = 0;
  uint32_t interrupt_status_ = 0;
  bool irq_level_ = false;
  std::string error_;
  bool reported_ = false;
};

}  // namespace passvm::virtio
