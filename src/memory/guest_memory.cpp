#include "memory/guest_memory.h"

#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "memory/layout.h"

namespace passvm {

GuestMemory::GuestMemory(uint64_t size, bool hugepages) : size_(size) {
  if (size < 16 * layout::MiB)
    throw std::runtime_error(fmt::format("guest memory {} MiB is too small: give -m 16M or more", size >> 20));
  const uint64_t align = hugepages ? 2 * layout::MiB : 4096;
  if (size % align != 0)
    throw std::runtime_error(fmt::format("guest memory size {:#x} is not a multiple of {} KiB", size, align >> 10));
  unsigned flags = MFD_CLOEXEC | (hugepages ? MFD_HUGETLB : 0u);
  fd_ = memfd_create("passvm-ram", flags);
  if (fd_ < 0) throw std::runtime_error(fmt::format("cannot create guest memory: {}", strerror(errno)));
  if (ftruncate(fd_, static_cast<off_t>(size)) != 0) {
    int err = errno;
    close(fd_);
    throw std::runtime_error(fmt::format("cannot size guest memory to {} MiB: {}", size >> 20, strerror(err)));
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd_, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    close(fd_);
    throw std::runtime_error(fmt::format("cannot map {} MiB of guest memory: {}{}", size >> 20, strerror(err),
                                         hugepages ? " (are enough hugepages reserved? see /proc/sys/vm/nr_hugepages)"
                                                   : ""));
  }
  base_ = static_cast<uint8_t*>(p);
  uint64_t low = size < layout::kLowRamMax ? size : layout::kLowRamMax;
  regions_.push_back({0, low, base_, 0});
  if (size > low) regions_.push_back({layout::kHighRamStart, size - low, base_ + low, low});
}

GuestMemory::~GuestMemory() {
  if (base_) munmap(base_, size_);
  if (fd_ >= 0) close(fd_);
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

unsigned GuestMemory::populate(unsigned threads) const {
  constexpr uint64_t kChunk = 64 * layout::MiB;  // unit of work: a multiple of any page size used here
  if (threads == 0) threads = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
  const uint64_t chunks = (size_ + kChunk - 1) / kChunk;
  threads = static_cast<unsigned>(std::min<uint64_t>(threads, chunks));
  const long page = sysconf(_SC_PAGESIZE);
  std::atomic<uint64_t> next{0};
  std::atomic<int> error{0};
  auto work = [&] {
    for (uint64_t c; error.load() == 0 && (c = next.fetch_add(1)) < chunks;) {
      uint8_t* at = base_ + c * kChunk;
      const uint64_t len = std::min(kChunk, size_ - c * kChunk);
      if (madvise(at, len, MADV_POPULATE_WRITE) == 0) continue;
      if (errno != EINVAL) {
        error = errno;
        return;
      }
      // Older kernels: a write fault per page does the same (the bytes are unchanged).
      for (uint64_t off = 0; off < len; off += static_cast<uint64_t>(page)) {
        auto* b = reinterpret_cast<volatile uint8_t*>(at + off);
        *b = *b;
      }
    }
  };
  std::vector<std::thread> pool;
  for (unsigned i = 1; i < threads; i++) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (error != 0)
    throw std::runtime_error(fmt::format("cannot allocate the guest's {} MiB of RAM: {}{}", size_ >> 20,
                                         strerror(error), error == ENOMEM || error == EFAULT
                                             ? " (the host is short of memory, or of hugepages with -S): give a "
                                               "smaller -m"
                                             : ""));
  return threads;
}

uint8_t* GuestMemory::host_address(uint64_t gpa, uint64_t len) const {
  for (const auto& r : regions_) {
    if (gpa >= r.gpa && gpa - r.gpa < r.size && len <= r.size - (gpa - r.gpa)) return r.hva + (gpa - r.gpa);
  }
  return nullptr;
}

void GuestMemory::read(uint64_t gpa, std::span<uint8_t> out) const {
  uint8_t* p = host_address(gpa, out.size());
  if (!p) throw std::out_of_range(fmt::format("guest read {:#x}+{:#x} is outside RAM", gpa, out.size()));
  std::memcpy(out.data(), p, out.size());
}

void GuestMemory::write(uint64_t gpa, std::span<const uint8_t> in) const {
  uint8_t* p = host_address(gpa, in.size());
  if (!p) throw std::out_of_range(fmt::format("guest write {:#x}+{:#x} is outside RAM", gpa, in.size()));
  std::memcpy(p, in.data(), in.size());
}

}  // namespace passvm
