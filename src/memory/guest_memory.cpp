#include "memory/guest_memory.h"

#include <fmt/format.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <exception>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "memory/layout.h"

namespace passvm {

#ifndef MFD_HUGE_2MB  // <linux/memfd.h>, which clashes with glibc's definitions of the other MFD_ flags
#define MFD_HUGE_2MB (21u << 26)
#define MFD_HUGE_1GB (30u << 26)
#endif

namespace {

constexpr uint64_t kHuge = 2 * layout::MiB;

std::string first_line(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

// "always [madvise] never" -> "madvise"; "" when the kernel has no transparent huge pages.
std::string thp_mode() {
  std::string line = first_line("/sys/kernel/mm/transparent_hugepage/enabled");
  auto open = line.find('['), close = line.find(']');
  return open == std::string::npos || close < open ? "" : line.substr(open + 1, close - open - 1);
}

uint64_t free_hugetlb_pages(uint64_t page) {
  try {
    return std::stoull(first_line(fmt::format("/sys/kernel/mm/hugepages/hugepages-{}kB/free_hugepages", page >> 10)));
  } catch (const std::exception&) {
    return 0;
  }
}

}  // namespace

std::string PageUsage::describe() const {
  if (resident == 0) return "none resident yet";
  std::string what = fmt::format("{} MiB resident", resident >> 20);
  if (huge == 0) return what + ", in 4 KiB pages";
  if (huge >= resident) return fmt::format("{}, all in {} pages", what, layout::size_text(page_size));
  return fmt::format("{}, {} MiB of it in {} pages, the rest in 4 KiB pages", what, huge >> 20, layout::size_text(page_size));
}

PageUsage parse_smaps(std::string_view smaps, uint64_t start, uint64_t end) {
  PageUsage u;
  bool inside = false;
  uint64_t kernel_page = 4096;
  while (!smaps.empty()) {
    size_t nl = smaps.find('\n');
    std::string_view line = smaps.substr(0, nl);
    smaps = nl == std::string_view::npos ? std::string_view{} : smaps.substr(nl + 1);
    unsigned long long lo = 0, hi = 0;
    char dash = 0;
    std::string l(line);
    if (std::sscanf(l.c_str(), "%llx%c%llx ", &lo, &dash, &hi) == 3 && dash == '-' && l.find(':') > l.find(' ')) {
      inside = lo < end && hi > start;
      kernel_page = 4096;
      continue;
    }
    if (!inside) continue;
    auto colon = l.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = l.substr(0, colon);
    unsigned long long kb = 0;
    if (std::sscanf(l.c_str() + colon + 1, "%llu", &kb) != 1) continue;
    const uint64_t bytes = kb * 1024;
    if (key == "KernelPageSize") {
      kernel_page = bytes;
      u.page_size = std::max(u.page_size, bytes);
    } else if (key == "Rss") {
      u.resident += bytes;
    } else if (key == "Shared_Hugetlb" || key == "Private_Hugetlb") {
      u.resident += bytes;
      u.huge += bytes;
    } else if (key == "AnonHugePages" || key == "ShmemPmdMapped" || key == "FilePmdMapped") {
      u.huge += bytes;
      if (bytes) u.page_size = std::max<uint64_t>(u.page_size, std::max<uint64_t>(kernel_page, kHuge));
    }
  }
  return u;
}

GuestMemory::GuestMemory(uint64_t size, bool hugetlb, uint32_t phys_bits, bool ht_hole) : size_(size) {
  if (size < 16 * layout::MiB)
    throw std::runtime_error(fmt::format("guest memory {} MiB is too small: give -m 16M or more", size >> 20));
  if (uint64_t max = layout::max_ram(phys_bits, ht_hole); size > max)
    throw std::runtime_error(fmt::format("guest memory {} MiB leaves no room for 64-bit PCI BARs in the guest's "
                                         "{}-bit physical address space ({} GiB{}): give -m {}G or less",
                                         size >> 20, phys_bits, (uint64_t{1} << phys_bits) / layout::GiB,
                                         ht_hole ? ", with RAM kept out of the HyperTransport hole below 1 TiB" : "",
                                         max / layout::GiB));
  void* p = MAP_FAILED;
  if (hugetlb) {
    // 1 GiB pages when the size is made of them and the pool holds enough; 2 MiB pages otherwise.
    uint64_t page = size % layout::GiB == 0 && free_hugetlb_pages(layout::GiB) * layout::GiB >= size ? layout::GiB
                                                                                                     : kHuge;
    if (size % page != 0)
      throw std::runtime_error(fmt::format("guest memory size {:#x} is not a multiple of {} KiB", size, page >> 10));
    fd_ = memfd_create("passvm-ram", MFD_CLOEXEC | MFD_HUGETLB | (page == layout::GiB ? MFD_HUGE_1GB : MFD_HUGE_2MB));
    if (fd_ < 0) throw std::runtime_error(fmt::format("cannot create guest memory: {}", strerror(errno)));
    if (ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      int err = errno;
      close(fd_);
      throw std::runtime_error(fmt::format("cannot size guest memory to {} MiB: {}", size >> 20, strerror(err)));
    }
    // Reserved at mmap (no MAP_NORESERVE): a pool too small fails here, with the message below, instead of
    // a SIGBUS at the first write to a page the pool could not give.
    p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    mapped_size_ = size;
    page_ = page;
    backing_ = fmt::format("{} hugetlbfs pages", layout::size_text(page));
  } else {
    if (size % 4096 != 0)
      throw std::runtime_error(fmt::format("guest memory size {:#x} is not a multiple of 4 KiB", size));
    // 2 MiB aligned, so that every 2 MiB of guest-physical memory can be one huge page: map 2 MiB more,
    // then give back the unaligned ends.
    p = mmap(nullptr, size + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED) {
      auto start = reinterpret_cast<uintptr_t>(p), aligned = (start + kHuge - 1) & ~(kHuge - 1);
      if (aligned > start) munmap(p, aligned - start);
      if (start + kHuge > aligned) munmap(reinterpret_cast<void*>(aligned + size), start + kHuge - aligned);
      p = reinterpret_cast<void*>(aligned);
      mapped_size_ = size;
      // Pinned DMA pages and fork do not mix: a child (none is made today) must not share them.
      madvise(p, size, MADV_DONTFORK);
      const std::string mode = thp_mode();
      if (mode == "never")
        small_pages_reason_ = "transparent huge pages are off on this host (/sys/kernel/mm/transparent_hugepage/"
                              "enabled says never): `echo madvise > /sys/kernel/mm/transparent_hugepage/enabled`, "
                              "or reserve hugepages and use -S";
      else if (madvise(p, size, MADV_HUGEPAGE) != 0)
        small_pages_reason_ = fmt::format("this kernel has no transparent huge pages (madvise: {}); reserve "
                                          "hugepages and use -S",
                                          strerror(errno));
      backing_ = small_pages_reason_.empty() ? "transparent huge pages" : "4 KiB pages";
      if (small_pages_reason_.empty()) page_ = kHuge;
    }
  }
  if (p == MAP_FAILED) {
    int err = errno;
    if (fd_ >= 0) close(fd_);
    throw std::runtime_error(fmt::format("cannot map {} MiB of guest memory: {}{}", size >> 20, strerror(err),
                                         hugetlb ? " (are enough hugepages reserved? see /proc/sys/vm/nr_hugepages)"
                                                 : ""));
  }
  base_ = static_cast<uint8_t*>(p);
  uint64_t low = size < layout::kLowRamMax ? size : layout::kLowRamMax;
  regions_.push_back({0, low, base_, 0});
  if (size > low) regions_.push_back({layout::high_ram_start(size, ht_hole), size - low, base_ + low, low});
}

GuestMemory::~GuestMemory() {
  if (base_) munmap(base_, mapped_size_);
  if (fd_ >= 0) close(fd_);
}

PageUsage GuestMemory::page_usage() const {
  std::ifstream f("/proc/self/smaps");
  std::stringstream text;
  text << f.rdbuf();
  const auto start = reinterpret_cast<uint64_t>(base_);
  return parse_smaps(text.str(), start, start + size_);
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> out;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return out;
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &set)) out.push_back(c);
  return out;
}

unsigned GuestMemory::populate(unsigned threads, const std::atomic<bool>* cancel,
                               const std::function<void()>& on_start) const {
  const uint64_t chunk = populate_chunk();
  // One worker per CPU passvm may run on, each pinned to its CPU: a page is allocated on the NUMA node of
  // the CPU that first touches it, so every node the CPUs span zeroes its own share of guest RAM, at its
  // own memory bandwidth (and a passvm confined to one node's CPUs keeps guest RAM on that node).
  std::vector<int> cpus = allowed_cpus();
  if (threads == 0) threads = static_cast<unsigned>(std::min<size_t>(cpus.size(), kMaxPopulateThreads));
  const uint64_t chunks = (size_ + chunk - 1) / chunk;
  threads = static_cast<unsigned>(std::max<uint64_t>(1, std::min<uint64_t>(threads, chunks)));
  const long page = sysconf(_SC_PAGESIZE);
  std::atomic<uint64_t> next{0};
  std::atomic<int> error{0};
  auto work = [&](unsigned index) {
    if (threads > 1 && !cpus.empty()) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpus[index % cpus.size()], &one);
      pthread_setaffinity_np(pthread_self(), sizeof one, &one);  // placement is an optimisation: errors are fine
    }
    if (on_start) {
      try {
        on_start();
      } catch (const std::exception&) {
        error = EPERM;  // a thread that cannot confine itself does no work
        return;
      }
    }
    for (uint64_t c; error.load() == 0 && !(cancel && cancel->load()) && (c = next.fetch_add(1)) < chunks;) {
      uint8_t* at = base_ + c * chunk;
      const uint64_t len = std::min(chunk, size_ - c * chunk);
      if (madvise(at, len, MADV_POPULATE_WRITE) == 0) continue;
      if (errno != EINVAL) {
        error = errno;
        return;
      }
      // Older kernels: a write fault per page does the same. An atomic or of 0 leaves the byte as it is
      // even while the kernel is being loaded into the same RAM by another thread.
      for (uint64_t off = 0; off < len; off += static_cast<uint64_t>(page))
        __atomic_fetch_or(at + off, uint8_t{0}, __ATOMIC_RELAXED);
    }
  };
  // The calling thread keeps its own affinity: the workers alone are pinned.
  std::vector<std::thread> pool;
  std::string no_thread;
  for (unsigned i = 0; i < threads; i++) {
    try {
      pool.emplace_back(work, i);
    } catch (const std::system_error& e) {
      // The host's limit on tasks (a cgroup's pids.max, RLIMIT_NPROC of --user's account): the workers
      // already started share the chunks between them.
      no_thread = e.what();
      break;
    }
  }
  std::exception_ptr start_failed;
  try {
    if (on_start) on_start();
  } catch (...) {
    start_failed = std::current_exception();
    error = EPERM;
  }
  for (auto& t : pool) t.join();
  if (start_failed) std::rethrow_exception(start_failed);
  if (pool.empty())
    throw std::runtime_error(fmt::format("cannot start a thread to allocate the guest's RAM: {}; the host's limit on "
                                         "tasks (a cgroup's pids.max, or RLIMIT_NPROC of the user passvm runs as) "
                                         "may be reached", no_thread));
  if (cancel && cancel->load()) throw std::runtime_error("the allocation of guest RAM was stopped");
  if (error != 0)
    throw std::runtime_error(fmt::format("cannot allocate the guest's {} MiB of RAM: {}{}", size_ >> 20,
                                         strerror(error), error == ENOMEM || error == EFAULT
                                             ? " (the host is short of memory, or of hugepages with -S): give a "
                                               "smaller -m"
                                             : ""));
  return static_cast<unsigned>(pool.size());
}

uint64_t GuestMemory::populate_chunk() const { return std::max<uint64_t>(8 * layout::MiB, page_); }

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
