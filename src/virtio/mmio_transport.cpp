#include "virtio/mmio_transport.h"

#include <fmt/format.h>

#include <cstring>

#include "base/eprint.h"

namespace passvm::virtio {

namespace {

// Register offsets (virtio 1.x, 4.2.2).
enum : uint64_t {
  kMagic = 0x000,
  kVersion = 0x004,
  kDeviceId = 0x008,
  kVendorId = 0x00c,
  kDeviceFeatures = 0x010,
  kDeviceFeaturesSel = 0x014,
  kDriverFeatures = 0x020,
  kDriverFeaturesSel = 0x024,
  kQueueSel = 0x030,
  kQueueNumMax = 0x034,
  kQueueNum = 0x038,
  kQueueReady = 0x044,
  kQueueNotify = 0x050,
  kInterruptStatus = 0x060,
  kInterruptAck = 0x064,
  kStatus = 0x070,
  kQueueDescLow = 0x080,
  kQueueDescHigh = 0x084,
  kQueueDriverLow = 0x090,
  kQueueDriverHigh = 0x094,
  kQueueDeviceLow = 0x0a0,
  kQueueDeviceHigh = 0x0a4,
  kShmLenLow = 0x0b0,
  kShmLenHigh = 0x0b4,
  kShmBaseLow = 0x0b8,
  kShmBaseHigh = 0x0bc,
  kConfigGeneration = 0x0fc,
  kConfig = 0x100,
};

constexpr uint32_t kMagicValue = 0x74726976;  // "virt"
constexpr uint32_t kVendor = 0x4d565350;      // "PSVM"
constexpr uint32_t kStatusFeaturesOk = 8, kStatusNeedsReset = 0x40;
constexpr uint32_t kInterruptUsedBuffer = 1, kInterruptConfigChange = 2;

uint64_t set_half(uint64_t value, bool high, uint32_t half) {
  return high ? (value & 0xffffffffull) | (uint64_t{half} << 32) : (value & ~0xffffffffull) | half;
}

}  // namespace

MmioTransport::MmioTransport(const GuestMemory& mem, Device& device, std::function<void(bool)> irq)
    : mem_(mem), device_(device), irq_(std::move(irq)) {
  for (uint16_t i = 0; i < device_.queue_count(); i++) queues_.push_back(std::make_unique<Queue>(mem_));
}

void MmioTransport::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard g(lock_);
  if (offset >= kConfig) {
    device_.read_config(offset - kConfig, data);
    return;
  }
  // Registers are read 32 bits at a time; anything else reads zeros.
  uint32_t value = data.size() == 4 && offset % 4 == 0 ? read_register(offset) : 0;
  std::memset(data.data(), 0, data.size());
  std::memcpy(data.data(), &value, std::min<size_t>(data.size(), 4));
}

void MmioTransport::write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard g(lock_);
  if (offset >= kConfig || data.size() != 4 || offset % 4 != 0) return;  // config space is read-only here
  uint32_t value;
  std::memcpy(&value, data.data(), 4);
  write_register(offset, value);
}

Queue* MmioTransport::selected() { return queue_sel_ < queues_.size() ? queues_[queue_sel_].get() : nullptr; }

uint32_t MmioTransport::read_register(uint64_t offset) {
  Queue* q = selected();
  switch (offset) {
    case kMagic: return kMagicValue;
    case kVersion: return 2;
    case kDeviceId: return device_.type();
    case kVendorId: return kVendor;
    case kDeviceFeatures: {
      uint64_t f = device_.features() | kFeatureVersion1;
      return device_features_sel_ == 0 ? static_cast<uint32_t>(f) : device_features_sel_ == 1 ? static_cast<uint32_t>(f >> 32) : 0;
    }
    case kQueueNumMax: return q ? Queue::kMaxSize : 0;
    case kQueueReady: return q && q->ready() ? 1 : 0;
    case kInterruptStatus: return interrupt_status_;
    case kStatus: return status_;
    case kQueueDescLow: return q ? static_cast<uint32_t>(q->desc()) : 0;
    case kQueueDescHigh: return q ? static_cast<uint32_t>(q->desc() >> 32) : 0;
    case kQueueDriverLow: return q ? static_cast<uint32_t>(q->avail()) : 0;
    case kQueueDriverHigh: return q ? static_cast<uint32_t>(q->avail() >> 32) : 0;
    case kQueueDeviceLow: return q ? static_cast<uint32_t>(q->used()) : 0;
    case kQueueDeviceHigh: return q ? static_cast<uint32_t>(q->used() >> 32) : 0;
    case kShmLenLow: case kShmLenHigh: return 0xffffffff;  // no shared memory region
    case kShmBaseLow: case kShmBaseHigh: return 0xffffffff;
    case kConfigGeneration: return 0;  // the config space never changes
    default: return 0;
  }
}

void MmioTransport::write_register(uint64_t offset, uint32_t value) {
  Queue* q = selected();
  // Queue setup is honoured only before the queue is enabled, as the specification asks of drivers.
  bool setup = q && !q->ready();
  switch (offset) {
    case kDeviceFeaturesSel: device_features_sel_ = value; break;
    case kDriverFeaturesSel: driver_features_sel_ = value; break;
    case kDriverFeatures:
      if (driver_features_sel_ < 2) driver_features_ = set_half(driver_features_, driver_features_sel_ == 1, value);
      break;
    case kQueueSel: queue_sel_ = value; break;
    case kQueueNum: if (setup) q->set_size(static_cast<uint16_t>(std::min<uint32_t>(value, 0xffff))); break;
    case kQueueDescLow: case kQueueDescHigh:
      if (setup) q->set_desc(set_half(q->desc(), offset == kQueueDescHigh, value));
      break;
    case kQueueDriverLow: case kQueueDriverHigh:
      if (setup) q->set_avail(set_half(q->avail(), offset == kQueueDriverHigh, value));
      break;
    case kQueueDeviceLow: case kQueueDeviceHigh:
      if (setup) q->set_used(set_half(q->used(), offset == kQueueDeviceHigh, value));
      break;
    case kQueueReady:
      if (q && value == 1 && !q->ready() && !q->enable()) fail(fmt::format("queue {}: {}", queue_sel_, q->error()));
      // Linux writes 0 when it deletes a queue and warns unless it then reads 0: the queue stops and forgets
      // its setup.
      if (q && value == 0) q->reset();
      break;
    case kQueueNotify:
      // Served before DRIVER_OK too: Linux's console posts its receive buffers between its probe's
      // virtio_device_ready() and the status write, which the specification allows.
      if (value < queues_.size() && error_.empty()) {
        Queue& nq = *queues_[value];
        if (device_.notified(static_cast<uint16_t>(value), nq)) used_buffers(nq);
        if (nq.broken()) fail(fmt::format("queue {}: {}", value, nq.error()));
      }
      break;
    case kInterruptAck:
      interrupt_status_ &= ~value;
      update_irq();
      break;
    case kStatus:
      if (value == 0) {
        reset_locked();
      } else {
        // FEATURES_OK stays set only for features that were offered, and VERSION_1 must be among them.
        uint64_t offered = device_.features() | kFeatureVersion1;
        if ((value & kStatusFeaturesOk) && (!(driver_features_ & kFeatureVersion1) || (driver_features_ & ~offered)))
          value &= ~kStatusFeaturesOk;
        status_ = value | (status_ & kStatusNeedsReset);
      }
      break;
    default: break;
  }
}

void MmioTransport::reset_locked() {
  device_.reset();
  for (auto& q : queues_) q->reset();
  status_ = 0;
  device_features_sel_ = driver_features_sel_ = 0;
  driver_features_ = 0;
  queue_sel_ = 0;
  interrupt_status_ = 0;
  error_.clear();
  update_irq();
}

void MmioTransport::used_buffers(Queue& q) {
  if (q.wants_interrupt()) set_interrupt(kInterruptUsedBuffer);
}

void MmioTransport::set_interrupt(uint32_t bits) {
  interrupt_status_ |= bits;
  update_irq();
}

void MmioTransport::update_irq() {
  bool level = interrupt_status_ != 0;
  if (level == irq_level_) return;
  irq_level_ = level;
  if (irq_) irq_(level);
}

void MmioTransport::fail(const std::string& why) {
  // The driver broke a rule: stop serving it and say so the way virtio does, with DEVICE_NEEDS_RESET
  // and a configuration change interrupt. A reset by the driver starts afresh.
  if (!error_.empty()) return;
  error_ = why;
  if (!reported_) {  // once per transport: a guest that breaks it again and again must not flood the log
    reported_ = true;
    eprint("passvm: virtio device {}: the guest's driver broke the protocol ({}); the device waits for "
               "the driver to reset it\n", device_.type(), why);
  }
  status_ |= kStatusNeedsReset;
  set_interrupt(kInterruptConfigChange);
}

void MmioTransport::with_queue(uint16_t index, const std::function<bool(Queue*)>& fn) {
  std::lock_guard g(lock_);
  Queue* q = index < queues_.size() && error_.empty() ? queues_[index].get() : nullptr;
  if (q && (!q->ready() || q->broken())) q = nullptr;
  bool used = fn(q);
  if (!q) return;
  if (used) used_buffers(*q);
  // Broken by its first chain too (nothing used): the driver must hear of it, or its input stops for good.
  if (q->broken()) fail(fmt::format("queue {}: {}", index, q->error()));
}

uint32_t MmioTransport::status() {
  std::lock_guard g(lock_);
  return status_;
}

std::string MmioTransport::error() {
  std::lock_guard g(lock_);
  return error_;
}

}  // namespace passvm::virtio
