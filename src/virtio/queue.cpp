#include "virtio/queue.h"

#include <fmt/format.h>

#include <atomic>
#include <cstring>

namespace passvm::virtio {

namespace {

constexpr uint16_t kDescNext = 1, kDescWrite = 2, kDescIndirect = 4;
constexpr uint16_t kAvailNoInterrupt = 1;

struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Desc) == 16);

// The driver writes these fields while the device reads them: one load or store each, never torn.
uint16_t load16(const uint8_t* p) { return __atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_RELAXED); }
void store16(uint8_t* p, uint16_t v) { __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, __ATOMIC_RELAXED); }

}  // namespace

void Queue::fail(std::string why) {
  if (error_.empty()) error_ = std::move(why);
}

bool Queue::enable() {
  if (size_ == 0 || size_ > kMaxSize || (size_ & (size_ - 1)) != 0) {
    fail(fmt::format("queue size {} is not a power of two up to {}", size_, kMaxSize));
    return false;
  }
  if (desc_ % 16 != 0 || avail_ % 2 != 0 || used_ % 4 != 0) {
    fail(fmt::format("rings at {:#x}, {:#x}, {:#x} are not aligned to 16, 2 and 4 bytes", desc_, avail_, used_));
    return false;
  }
  desc_hva_ = mem_->host_address(desc_, 16ull * size_);
  avail_hva_ = mem_->host_address(avail_, 6 + 2ull * size_);
  used_hva_ = mem_->host_address(used_, 6 + 8ull * size_);
  if (!desc_hva_ || !avail_hva_ || !used_hva_) {
    fail(fmt::format("rings at {:#x}, {:#x}, {:#x} ({} entries) are not in guest RAM", desc_, avail_, used_, size_));
    return false;
  }
  next_avail_ = 0;
  next_used_ = 0;
  ready_ = true;
  return true;
}

void Queue::reset() {
  size_ = kMaxSize;
  desc_ = avail_ = used_ = 0;
  ready_ = false;
  next_avail_ = next_used_ = 0;
  desc_hva_ = avail_hva_ = used_hva_ = nullptr;
  error_.clear();
}

std::optional<Chain> Queue::pop() {
  if (!ready_ || broken()) return std::nullopt;
  uint16_t avail_idx = load16(avail_hva_ + 2);
  if (avail_idx == next_avail_) return std::nullopt;
  if (static_cast<uint16_t>(avail_idx - next_avail_) > size_) {
    fail(fmt::format("the available ring's index moved {} entries ahead of a queue of {}",
                     static_cast<uint16_t>(avail_idx - next_avail_), size_));
    return std::nullopt;
  }
  std::atomic_thread_fence(std::memory_order_acquire);  // the entry and its descriptors after the index
  uint16_t head = load16(avail_hva_ + 4 + 2 * (next_avail_ % size_));
  next_avail_++;

  Chain chain;
  chain.head = head;
  uint16_t index = head;
  for (uint32_t count = 0;; count++) {
    if (index >= size_) {
      fail(fmt::format("descriptor index {} is beyond the queue's {} entries", index, size_));
      return std::nullopt;
    }
    if (count >= size_) {
      fail("a descriptor chain is longer than the queue (a loop)");
      return std::nullopt;
    }
    Desc d;
    std::memcpy(&d, desc_hva_ + 16ull * index, sizeof d);  // one copy: the guest may rewrite it meanwhile
    if (d.flags & kDescIndirect) {
      fail("an indirect descriptor, a feature this device does not offer");
      return std::nullopt;
    }
    if (d.len != 0) {
      uint8_t* data = mem_->host_address(d.addr, d.len);
      if (!data) {
        fail(fmt::format("descriptor {} points outside guest RAM ({:#x}+{:#x})", index, d.addr, d.len));
        return std::nullopt;
      }
      if (d.flags & kDescWrite) {
        chain.writable.push_back({data, d.len});
      } else {
        if (!chain.writable.empty()) {
          fail("a chain has a device-readable buffer after a writable one");
          return std::nullopt;
        }
        chain.readable.push_back({data, d.len});
      }
    }
    if (!(d.flags & kDescNext)) break;
    index = d.next;
  }
  return chain;
}

void Queue::push_used(uint16_t head, uint32_t written) {
  if (!ready_) return;
  uint8_t* elem = used_hva_ + 4 + 8ull * (next_used_ % size_);
  uint32_t id = head;
  std::memcpy(elem, &id, 4);
  std::memcpy(elem + 4, &written, 4);
  next_used_++;
  std::atomic_thread_fence(std::memory_order_release);  // the element before the index that publishes it
  store16(used_hva_ + 2, next_used_);
}

bool Queue::wants_interrupt() const {
  if (!ready_) return false;
  std::atomic_thread_fence(std::memory_order_seq_cst);  // the used index before the driver's flag
  return !(load16(avail_hva_) & kAvailNoInterrupt);
}

}  // namespace passvm::virtio
