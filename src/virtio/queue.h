// virtio: paravirtual devices, so that a guest's console needs no exit per character.
//
// Queue is one split virtqueue (virtio 1.x, section 2.7) in guest RAM: the driver publishes chains of
// descriptors in the available ring, the device takes them, fills or reads their buffers, and returns
// them through the used ring. Every address and index in guest RAM is the guest's to write at any
// time, so everything read from it is checked before use: descriptor indices against the queue size,
// buffers against guest RAM (GuestMemory::host_address), chains against a length limit (a loop in the
// descriptor table ends there). A queue that breaks a rule is marked broken and serves nothing more
// until the driver resets the device; passvm never reads or writes outside guest RAM for it.
//
// Lifetime and locking: a Queue belongs to one device, which holds its own lock around every call;
// GuestMemory must outlive it. Not thread-safe on its own.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "memory/guest_memory.h"

namespace passvm::virtio {

// One buffer of a chain, in host memory (inside guest RAM).
struct Buffer {
  uint8_t* data;
  uint32_t size;
};

// A chain taken from the available ring: what the device may read, then what it may write.
struct Chain {
  uint16_t head = 0;
  std::vector<Buffer> readable;
  std::vector<Buffer> writable;
};

class Queue {
 public:
  static constexpr uint16_t kMaxSize = 256;

  explicit Queue(const GuestMemory& mem) : mem_(&mem) {}

  // The driver's setup (virtio-mmio registers). Ignored while the queue is ready.
  void set_size(uint16_t size) { size_ = size; }
  void set_desc(uint64_t gpa) { desc_ = gpa; }
  void set_avail(uint64_t gpa) { avail_ = gpa; }
  void set_used(uint64_t gpa) { used_ = gpa; }
  uint16_t size() const { return size_; }
  uint64_t desc() const { return desc_; }
  uint64_t avail() const { return avail_; }
  uint64_t used() const { return used_; }

  // The driver sets QueueReady: checks size and ring addresses (false, with error() saying why, when
  // they are not usable).
  bool enable();
  bool ready() const { return ready_; }
  void reset();  // back to the state after the device's reset

  // The next available chain, or nothing when the ring is empty or the queue is broken.
  std::optional<Chain> pop();
  // Hands a chain back to the driver, saying how many bytes the device wrote into it.
  void push_used(uint16_t head, uint32_t written);
  // The driver has not asked to go without an interrupt for used buffers (VIRTQ_AVAIL_F_NO_INTERRUPT).
  bool wants_interrupt() const;

  bool broken() const { return !error_.empty(); }
  const std::string& error() const { return error_; }  // what the driver got wrong, first time only

 private:
  void fail(std::string why);

  const GuestMemory* mem_;
  uint16_t size_ = kMaxSize;
  uint64_t desc_ = 0, avail_ = 0, used_ = 0;
  bool ready_ = false;
  uint16_t next_avail_ = 0;  // the next available-ring entry the device will take
  uint16_t next_used_ = 0;   // the used ring's idx as the device last wrote it
  uint8_t* desc_hva_ = nullptr;
  uint8_t* avail_hva_ = nullptr;
  uint8_t* used_hva_ = nullptr;
  std::string error_;
};

}  // namespace passvm::virtio
