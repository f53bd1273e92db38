#include "boot/linux_boot.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <cstring>
#include <stdexcept>

#include "boot/kernel_cache.h"
#include "boot/vmlinux.h"
#include "memory/layout.h"

namespace passvm::boot {

namespace {

template <typename T>
void store(std::vector<uint8_t>& page, size_t offset, T v) {
  std::memcpy(page.data() + offset, &v, sizeof v);
}

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
uint64_t align_down(uint64_t v, uint64_t a) { return v / a * a; }

// The RAM entry holding [addr, addr+size), or nullptr. addr + size may not fit in 64 bits (a header's
// load address near 2^64): it must not wrap into RAM.
const E820Entry* ram_holding(const std::vector<E820Entry>& e820, uint64_t addr, uint64_t size) {
  for (const auto& e : e820)
    if (e.type == E820Type::Ram && addr >= e.addr && size <= e.size && addr - e.addr <= e.size - size) return &e;
  return nullptr;
}

uint64_t mib(uint64_t bytes) { return (bytes + layout::MiB - 1) / layout::MiB; }

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Initrd Initrd::bytes(std::span<const uint8_t> data) {
  return {data.size(), [data](std::span<uint8_t> dest) { std::copy(data.begin(), data.end(), dest.begin()); }};
}

Initrd Initrd::file(const std::string& path) {
  uint64_t size = 0;
  auto fd = std::shared_ptr<int>(new int(open_boot_file(path, "initrd", &size)), [](int* f) {
    close(*f);
    delete f;
  });
  return {size, [fd, path](std::span<uint8_t> dest) { read_boot_bytes(*fd, dest, path, "initrd"); }};
}

LinuxBoot load_linux(const GuestMemory& mem, const std::string& kernel_path, const std::string& initrd_path,
                     const std::string& cmdline, const std::vector<E820Entry>& e820, uint64_t rsdp_addr,
                     bool unpack_on_host, const CacheDirs& cache_dirs, const std::atomic<bool>* cancel) {
  KernelImage kernel = KernelImage::open(kernel_path);
  Initrd initrd = initrd_path.empty() ? Initrd{} : Initrd::file(initrd_path);
  return load_linux_image(mem, kernel, initrd, cmdline, e820, rsdp_addr, kernel_path, unpack_on_host, cache_dirs,
                          cancel);
}

LinuxBoot load_linux_image(const GuestMemory& mem, std::span<const uint8_t> kernel, const Initrd& initrd,
                           const std::string& cmdline, const std::vector<E820Entry>& e820, uint64_t rsdp_addr,
                           const std::string& kernel_name, bool unpack_on_host, const CacheDirs& cache_dirs,
                           const std::atomic<bool>* cancel, const FileIdentity* kernel_file) {
  KernelImage image = KernelImage::bytes(kernel, kernel_file);
  return load_linux_image(mem, image, initrd, cmdline, e820, rsdp_addr, kernel_name, unpack_on_host, cache_dirs,
                          cancel);
}

LinuxBoot load_linux_image(const GuestMemory& mem, KernelImage& kernel, const Initrd& initrd,
                           const std::string& cmdline, const std::vector<E820Entry>& e820, uint64_t rsdp_addr,
                           const std::string& kernel_name, bool unpack_on_host, const CacheDirs& cache_dirs,
                           const std::atomic<bool>* cancel) {
  const SetupHeader h = parse_setup_header(kernel.head(), kernel.size(), kernel_name);
  auto check_cancel = [cancel] {
    if (cancel && cancel->load(std::memory_order_relaxed)) throw LoadCancelled();
  };
  LinuxBoot b;
  b.protocol = h.version;

  // Protected-mode kernel: at pref_address if it has one, aligned as it asks when it can be moved.
  uint64_t addr = h.pref_address != 0 ? h.pref_address : kDefaultLoadAddr;
  if (h.relocatable_kernel && h.kernel_alignment != 0) addr = align_up(addr, h.kernel_alignment);
  // Below 1 MiB are the zero page, the page tables and the command line; a pref_address near 2^64 aligns
  // up to 0. Either way the kernel would be written over what boots it.
  if (addr < layout::kHighMemStart)
    throw std::runtime_error(fmt::format("{} asks to be loaded at {:#x} (pref_address {:#x}), below 1 MiB: the "
                                         "bzImage's setup header is damaged",
                                         kernel_name, addr, h.pref_address));
  const uint64_t footprint = std::max<uint64_t>(h.kernel_size, h.init_size);
  const E820Entry* low = ram_holding(e820, addr, footprint);
  if (!low)
    throw std::runtime_error(fmt::format(
        "{} needs {} MiB of RAM from {:#x} to decompress and run, which this guest does not have: give it more "
        "memory (at least {} MiB)",
        kernel_name, mib(footprint), addr, mib(addr + footprint) + 16));
  b.kernel_addr = addr;
  b.kernel_size = h.kernel_size;
  b.kernel_end = addr + footprint;
  uint64_t entry = addr + 0x200;  // the decompressor's 64-bit entry
  if (unpack_on_host) {
    auto check = [&](const VmlinuxLayout& unpacked_layout) {
      for (const auto& seg : unpacked_layout.segments)
        if (seg.paddr < layout::kHighMemStart || !ram_holding(e820, seg.paddr, seg.mem_size))
          throw std::runtime_error(
              fmt::format("{}: a kernel segment at {:#x} ({} MiB) is outside this guest's RAM: give it more memory, "
                          "or boot with --guest-decompress",
                          kernel_name, seg.paddr, mib(seg.mem_size)));
    };
    auto t0 = std::chrono::steady_clock::now();
    KernelCache cache(cache_dirs, kernel);
    b.key_ms = ms_since(t0);
    t0 = std::chrono::steady_clock::now();
    std::optional<VmlinuxLayout> placed =
        cache.load(
            [&](uint64_t paddr, std::span<const uint8_t> bytes) {
              check_cancel();
              mem.write(paddr, bytes);
            },
            check,
            [&](uint64_t paddr, uint64_t length) {
              check_cancel();
              return mem.host_address(paddr, length);
            });
    b.from_cache = placed.has_value();
    if (placed) b.cache_file = cache.loaded_from();
    if (!placed) {
      VmlinuxWriter writer(
          [&](uint64_t paddr, std::span<const uint8_t> bytes) {
            check_cancel();
            mem.write(paddr, bytes);
            cache.record(paddr, bytes);
          },
          check);
      // Decoded straight into guest RAM; the cache records it from there.
      writer.place_in(
          [&](uint64_t paddr, uint64_t length) {
            check_cancel();
            return mem.host_address(paddr, length);
          },
          [&](uint64_t paddr, std::span<const uint8_t> bytes) { cache.record(paddr, bytes); });
      if (unpack_bzimage(kernel.whole(), h, writer, &b.unpack_note)) {
        placed = writer.finish();
        cache.commit(*placed);
      }
    }
    if (placed) {
      std::vector<uint8_t> zeros(64 * 1024, 0);
      for (const auto& seg : placed->segments) {
        for (uint64_t at = seg.file_size; at < seg.mem_size; at += zeros.size())
          mem.write(seg.paddr + at,
                    std::span<const uint8_t>(zeros).first(std::min<uint64_t>(zeros.size(), seg.mem_size - at)));
        b.kernel_end = std::max(b.kernel_end, seg.paddr + seg.mem_size);
      }
      entry = placed->entry;
      b.unpacked_on_host = true;
    }
    b.kernel_ms = ms_since(t0);
  }
  if (!b.unpacked_on_host) {
    mem.write(addr, kernel.whole().subspan(h.kernel_offset));
  }

  // Initrd: as high as possible in the RAM that holds the kernel, below initrd_addr_max, above the kernel.
  // One too big for that goes to the top of RAM above 4 GiB, when the kernel can take it there.
  if (initrd.size != 0) {
    uint64_t limit = std::min<uint64_t>(low->addr + low->size, uint64_t{h.initrd_addr_max} + 1);
    uint64_t at = initrd.size <= limit ? align_down(limit - initrd.size, 4096) : 0;
    uint8_t* dest = initrd.size <= limit && at >= b.kernel_end ? mem.host_address(at, initrd.size) : nullptr;
    const bool above_4g = (h.xloadflags & kXlfCanBeLoadedAbove4G) != 0;
    if (dest == nullptr && above_4g) {
      for (auto e = e820.rbegin(); e != e820.rend() && dest == nullptr; ++e) {
        if (e->type != E820Type::Ram || e->addr < layout::kHighRamStart || e->size < initrd.size) continue;
        at = align_down(e->addr + e->size - initrd.size, 4096);
        if (at >= e->addr && at >= b.kernel_end) dest = mem.host_address(at, initrd.size);
      }
    }
    if (dest == nullptr)
      throw std::runtime_error(fmt::format(
          "the initrd ({} MiB) does not fit between the kernel (ends at {:#x}) and {:#x}{}: give the guest more "
          "memory or use a smaller initrd",
          mib(initrd.size), b.kernel_end, limit,
          above_4g ? ", nor in RAM above 4 GiB" : " (this kernel cannot take one above 4 GiB)"));
    check_cancel();
    auto t0 = std::chrono::steady_clock::now();
    initrd.copy_to(std::span(dest, initrd.size));
    b.initrd_ms = ms_since(t0);
    b.initrd_addr = at;
    b.initrd_size = initrd.size;
  }

  // Command line: cmdline_size counts the bytes before the terminating NUL.
  const uint64_t cmdline_max = std::min<uint64_t>(h.cmdline_size, layout::kCmdlineMax - 1);
  if (cmdline.size() > cmdline_max)
    throw std::runtime_error(fmt::format("the kernel command line is {} bytes; {} accepts at most {}: shorten it",
                                         cmdline.size(), kernel_name, cmdline_max));
  if (cmdline.find('\0') != std::string::npos)
    throw std::runtime_error("the kernel command line contains a NUL byte: remove it");
  std::vector<uint8_t> line(cmdline.begin(), cmdline.end());
  line.push_back(0);
  mem.write(layout::kCmdlineAddr, line);
  b.cmdline_addr = layout::kCmdlineAddr;

  // Zero page: the kernel's own setup header, then what a boot loader fills in.
  if (e820.size() > zp::kE820Max)
    throw std::runtime_error(fmt::format("the e820 map has {} entries, the zero page holds {}", e820.size(),
                                         zp::kE820Max));
  std::vector<uint8_t> page(4096, 0);
  std::memcpy(page.data() + kSetupHeaderOffset, kernel.head().data() + kSetupHeaderOffset,
              h.header_end - kSetupHeaderOffset);
  store<uint8_t>(page, zp::kTypeOfLoader, 0xff);  // undefined boot loader: no id assigned
  store<uint8_t>(page, zp::kLoadflags, static_cast<uint8_t>(h.loadflags | kLoadedHigh));
  store<uint32_t>(page, zp::kCode32Start, static_cast<uint32_t>(b.kernel_addr));
  store<uint32_t>(page, zp::kRamdiskImage, static_cast<uint32_t>(b.initrd_addr));
  store<uint32_t>(page, zp::kRamdiskSize, static_cast<uint32_t>(b.initrd_size));
  store<uint32_t>(page, zp::kExtRamdiskImage, static_cast<uint32_t>(b.initrd_addr >> 32));
  store<uint32_t>(page, zp::kExtRamdiskSize, static_cast<uint32_t>(b.initrd_size >> 32));
  store<uint32_t>(page, zp::kCmdLinePtr, static_cast<uint32_t>(b.cmdline_addr));
  if (rsdp_addr != 0 && h.version >= 0x020e) store<uint64_t>(page, zp::kAcpiRsdpAddr, rsdp_addr);
  store<uint8_t>(page, zp::kE820Entries, static_cast<uint8_t>(e820.size()));
  for (size_t i = 0; i < e820.size(); i++) {
    size_t at = zp::kE820Table + i * zp::kE820EntrySize;
    store<uint64_t>(page, at, e820[i].addr);
    store<uint64_t>(page, at + 8, e820[i].size);
    store<uint32_t>(page, at + 16, static_cast<uint32_t>(e820[i].type));
  }
  mem.write(layout::kBootParamsAddr, page);
  b.zero_page = layout::kBootParamsAddr;

  // The decompressor's 64-bit entry is 0x200 past the start of the protected-mode kernel; an unpacked
  // vmlinux is entered at startup_64 directly.
  b.entry = setup_long_mode(mem, entry, b.zero_page);
  return b;
}

}  // namespace passvm::boot
