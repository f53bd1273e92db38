// kvm/exit_sites.h: which guest addresses cost exits, per vCPU.
//
// A boot that is slow under one VMM and not another is usually slow at a few
// addresses: a UART status register read per character, a PCI config scan,
// a timer the guest polls. Each vCPU counts its port I/O and MMIO exits by
// address here; --stats prints the busiest. Only the vCPU's own thread adds;
// any thread may read (counts are atomics, so a reading is a consistent-enough
// snapshot while the guest runs, and exact once the vCPU has stopped). The
// table is fixed and small: addresses beyond it are counted together, as other.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace passvm {

struct ExitSite {
  bool mmio = false;
  bool write = false;
  uint64_t addr = 0;
  uint64_t count = 0;
  std::string text() const;  // "port 0x3fd read", "mmio 0xfee00000 write"
};

class ExitSites {
 public:
  static constexpr size_t kSlots = 256;

  // One exit at addr. Called by the owning vCPU thread only.
  void add(bool mmio, bool write, uint64_t addr);

  // Every site with a count, and how many exits found no free slot.
  std::vector<ExitSite> sites() const;
  uint64_t overflow() const { return overflow_.load(std::memory_order_relaxed); }

  // Sites of several vCPUs summed by address, busiest first, at most n (n == 0: all).
  static std::vector<ExitSite> busiest(const std::vector<std::vector<ExitSite>>& per_vcpu, size_t n);

 private:
  struct Slot {
    std::atomic<uint64_t> key{0};  // 0: free; else the encoded site
    std::atomic<uint64_t> count{0};
  };
  std::array<Slot, kSlots> slots_;
  std::atomic<uint64_t> overflow_{0};
};

}  // namespace passvm
