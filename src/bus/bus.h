// bus: address-range dispatch for trapped guest accesses.
//
// A vCPU exit for port I/O or MMIO lands here: the Bus finds the device whose
// range holds the address and calls it with the offset inside that range.
// There is one Bus for port I/O and one for MMIO. Ranges can be added and
// removed while vCPUs run (a guest moving a BAR does that from inside a
// dispatch), so the range map has its own lock which is never held while a
// device runs. Devices must outlive their registration and do their own
// locking: two vCPUs may call the same device at once.
#pragma once

#include <cstdint>
#include <map>
#include <shared_mutex>
#include <span>
#include <string>

namespace passvm {

class BusDevice {
 public:
  virtual ~BusDevice() = default;
  // offset is relative to the base the device was registered at.
  virtual void read(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void write(uint64_t offset, std::span<const uint8_t> data) = 0;
};

class Bus {
 public:
  explicit Bus(std::string name) : name_(std::move(name)) {}

  // Throws std::invalid_argument naming both ranges if [base, base+size) overlaps one already added.
  void add(uint64_t base, uint64_t size, BusDevice* dev);
  // Removes the range that starts at base; returns false if none does.
  bool remove(uint64_t base);
  // Some device's range overlaps [base, base+size).
  bool overlaps(uint64_t base, uint64_t size);

  // Returns false when no device claims the address: reads then see all ones,
  // as on a real bus with nobody answering, and writes are dropped.
  bool read(uint64_t addr, std::span<uint8_t> data);
  bool write(uint64_t addr, std::span<const uint8_t> data);

  const std::string& name() const { return name_; }

 private:
  struct Range {
    uint64_t size;
    BusDevice* dev;
  };
  // Finds the device for [addr, addr+len); returns nullptr if the access is not wholly inside one range.
  BusDevice* find(uint64_t addr, uint64_t len, uint64_t* offset);

  std::string name_;
  std::shared_mutex lock_;
  std::map<uint64_t, Range> ranges_;  // keyed by base
};

}  // namespace passvm
