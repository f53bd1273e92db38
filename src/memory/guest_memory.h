// memory: guest RAM.
//
// Guest RAM is one mapping, cut into guest-physical regions around the 32-bit PCI
// hole. By default it is anonymous memory, 2 MiB aligned, with transparent huge pages
// asked for: every 2 MiB of guest-physical memory can then be one host page, which
// makes the guest's nested paging cheaper, lets the IOMMU map guest RAM in 2 MiB
// entries (DMA through 4 KiB IOMMU mappings is measurably slower), and makes
// allocating, pinning and freeing faster. With -S it is a memfd on the host's reserved
// hugetlbfs pages, 1 GiB ones when the size allows and the pool has them. What the
// kernel actually gave is read back from /proc/self/smaps (page_usage()), never assumed.
//
// KVM memory slots and IOMMU DMA mappings are made from regions(); device models and the
// boot loader reach guest RAM through host_address()/read()/write(), which refuse any
// range not wholly inside RAM, so a guest-supplied address can never reach passvm's own
// memory.
//
// Lifetime: the mapping lives as long as the object; KVM slots and DMA mappings made from
// it must be gone first (the machine declares them after it).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>
#include <string_view>
#include <vector>

namespace passvm {

struct MemoryRegion {
  uint64_t gpa;
  uint64_t size;
  uint8_t* hva;
  uint64_t offset;  // offset of this region inside the mapping
};

// How much of a mapping is resident, and in which page sizes (from smaps).
struct PageUsage {
  uint64_t resident = 0;      // bytes
  uint64_t huge = 0;          // bytes of that in pages larger than 4 KiB
  uint64_t page_size = 4096;  // the largest page size seen: 4 KiB, 2 MiB (THP or hugetlbfs) or 1 GiB
  // "512 MiB resident, all in 2 MiB pages"
  std::string describe() const;
};

// Sums the smaps entries that lie inside [start, end) (pure: for tests and page_usage()).
PageUsage parse_smaps(std::string_view smaps, uint64_t start, uint64_t end);

// The CPUs this process may run on (sched_getaffinity), in order.
std::vector<int> allowed_cpus();

// Zeroing pages runs at memory bandwidth well before this many threads on any one host.
inline constexpr size_t kMaxPopulateThreads = 64;

class GuestMemory {
 public:
  // Allocates `size` bytes of guest RAM and lays them out on the x86 map (layout.h); hugetlbfs pages
  // with `hugetlb` (-S), else anonymous memory with transparent huge pages where the host allows them.
  // Throws std::runtime_error with a user-facing message when the memory cannot be had.
  // phys_bits: the guest's physical address bits; RAM must leave room for the 64-bit PCI window.
  // ht_hole: the host has AMD's HyperTransport hole below 1 TiB, which RAM must not reach (layout.h).
  GuestMemory(uint64_t size, bool hugetlb, uint32_t phys_bits = 36, bool ht_hole = false);
  ~GuestMemory();
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  const std::vector<MemoryRegion>& regions() const { return regions_; }

  // The memfd behind guest RAM (-S), which a region's `offset` indexes; -1 for anonymous memory.

  int fd() const { return fd_; }
  uint64_t size() const { return size_; }
  // What was asked of the kernel ("transparent huge pages", "1 GiB hugetlbfs pages", ...).
  const std::string& backing() const { return backing_; }
  // Why guest RAM cannot be on huge pages here, with the fix; empty when it can.
  const std::string& small_pages_reason() const { return small_pages_reason_; }
  // What the kernel actually gave, now.
  PageUsage page_usage() const;

  // Allocates every page now, `threads` at a time (0: one per CPU passvm may run on, at most
  // kMaxPopulateThreads, each pinned to its CPU so that pages land on that CPU's NUMA node), instead of at
  // the guest's first touch. Pinning for DMA allocates them anyway, one page after the other in one thread;
  // this does it in parallel first, and a host short of memory fails here with a clear message rather
  // than later. Safe while another thread writes guest RAM (no byte changes). Returns the number of
  // threads used; throws std::runtime_error on failure.
  // Each worker takes populate_chunk() bytes at a time. cancel, if given, stops the workers at their next
  // chunk once it is true: populate then throws.
  // on_start, if given, runs in each worker as it starts (after its CPU placement) and in the calling
  // thread once all are started: where the threads confine themselves, since the guest may run meanwhile.
  unsigned populate(unsigned threads = 0, const std::atomic<bool>* cancel = nullptr,
                    const std::function<void()>& on_start = {}) const;

  // The unit of the workers' work: 8 MiB, or the page size when pages are larger (1 GiB hugetlbfs pages).
  // Small because a worker holds the process's memory map lock for reading through each chunk, and every
  // mmap, munmap or thread start elsewhere in passvm (mapping a device's BARs, making the vCPUs) waits for
  // the chunks in progress: with 64 MiB chunks an 8 GiB guest's setup took 1.1-1.5 s in the lab, with 8 MiB
  // 0.3-0.5 s, and on two CPUs the allocation was no slower. On one CPU the A/B runs disagree on the
  // passthrough boot; the setup was shorter in 8 of 11 pairs (README, Benchmarks: runs 71-75).
  uint64_t populate_chunk() const;

  // Host pointer to [gpa, gpa+len) or nullptr if the range is not wholly inside one region.
  uint8_t* host_address(uint64_t gpa, uint64_t len) const;
  // Throw std::out_of_range if the range is not wholly inside RAM.
  void read(uint64_t gpa, std::span<uint8_t> out) const;
  void write(uint64_t gpa, std::span<const uint8_t> in) const;

 private:
  uint64_t size_;
  uint64_t mapped_size_ = 0;
  int fd_ = -1;  // the memfd behind guest RAM with -S, else -1
  uint64_t page_ = 4096;  // the page size asked for: 4 KiB or 2 MiB (transparent), 2 MiB or 1 GiB (-S)
  uint8_t* base_ = nullptr;
  std::string backing_, small_pages_reason_;
  std::vector<MemoryRegion> regions_;
};

}  // namespace passvm
