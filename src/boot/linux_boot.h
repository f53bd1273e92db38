// boot: getting a guest kernel from a file into guest RAM and a vCPU ready to run it.
//
// This layer knows the Linux x86 boot protocol (Documentation/arch/x86/boot.rst:
// bzImage setup header, the "zero page" of boot parameters, the e820 memory
// map) and how to put a CPU straight into 64-bit long mode, so that no
// firmware and no real-mode code run in the guest. It only writes guest
// memory and describes register values; the kvm layer loads them into a vCPU
// (Vcpu::setup_linux_boot). Machine assembly:
//   auto e820 = boot::build_e820(mem);
//   boot::LinuxBoot b = boot::load_linux(mem, kernel, initrd, cmdline, e820, rsdp_addr);
//   vcpus[0]->setup_linux_boot(b);
//
// Guest RAM after load_linux (all addresses guest-physical):
//   layout::kGdtAddr         GDT for the 64-bit entry
//   layout::kBootParamsAddr  zero page (struct boot_params), rsi at entry
//   layout::kPml4Addr...     identity page tables for 0-4 GiB
//   layout::kCmdlineAddr     NUL-terminated command line
//   pref_address (16 MiB)    protected-mode kernel; it decompresses in place, using init_size bytes
//   top of low RAM           initrd, page aligned, below initrd_addr_max (or, when it does not fit
//                            there, at the top of RAM above 4 GiB, if the kernel allows it)
// The vCPU enters at kernel + 0x200 in long mode (Vcpu::setup_linux_boot).
#pragma once

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <functional>
#include <span>
#include <optional>
#include <string>
#include <vector>

#include "boot/bzimage.h"
#include "boot/e820.h"
#include "boot/kernel_cache.h"
#include "boot/long_mode.h"
#include "memory/guest_memory.h"

namespace passvm::boot {

struct LinuxBoot {
  uint16_t protocol = 0;     // boot protocol version of the kernel, 0x020f = 2.15
  uint64_t kernel_addr = 0;  // where the protected-mode kernel was copied
  uint64_t kernel_size = 0;  // bytes copied
  uint64_t kernel_end = 0;   // kernel_addr + max(kernel_size, init_size): what the kernel may use
  uint64_t initrd_addr = 0;  // 0 when there is no initrd
  uint64_t initrd_size = 0;
  uint64_t cmdline_addr = 0;
  uint64_t zero_page = 0;
  LongModeEntry entry;  // 64-bit entry registers
  bool unpacked_on_host = false;  // vmlinux.h: the payload was unpacked by passvm, entry is startup_64
  std::string unpack_note;        // why it was not, when it was asked to be
  bool from_cache = false;        // the unpacked kernel came from the cache (kernel_cache.h)
  std::string cache_file;         // which cache file
  // Where the load's time went: finding the cache key (in the file index, or by reading and hashing the
  // bzImage); placing the kernel in guest RAM (read from the cache, or unpacked, which includes writing its
  // cache entry); reading the initrd.
  double key_ms = 0, kernel_ms = 0, initrd_ms = 0;
};

// An initrd: its size, and how to put its bytes into guest RAM. From a file they are read straight into
// guest RAM, so a distribution initrd (tens of MiB) costs passvm no memory of its own.
struct Initrd {
  uint64_t size = 0;
  std::function<void(std::span<uint8_t> dest)> copy_to;  // dest.size() == size

  // data must outlive the load.
  static Initrd bytes(std::span<const uint8_t> data);
  // Opens the file now (errors as read_boot_file's); reads it when copy_to runs.
  static Initrd file(const std::string& path);
};

// Reads the files and calls load_linux_image. initrd_path may be empty (no initrd). rsdp_addr 0 means
// "let the kernel find the RSDP in the 0xE0000 area". Throws std::runtime_error naming the problem
// (missing file, not a bzImage, does not fit in guest RAM, command line too long) and what to change.
// unpack_on_host: unpack the compressed kernel in passvm (vmlinux.h) rather than in the guest, when its
// format allows; otherwise, or when false, the guest runs the bzImage's own decompressor. cache: where
// unpacked kernels are kept between boots (kernel_cache.h), empty for no cache. cancel: when another thread
// sets it, the load stops between two pieces with LoadCancelled (it may run beside the rest of the setup).
LinuxBoot load_linux(const GuestMemory& mem, const std::string& kernel_path, const std::string& initrd_path,
                     const std::string& cmdline, const std::vector<E820Entry>& e820, uint64_t rsdp_addr,
                     bool unpack_on_host = true, const CacheDirs& cache = {},
                     const std::atomic<bool>* cancel = nullptr);

// The same from an opened kernel (boot_file.h), whose bytes past the setup header are read only if the
// cache does not have it unpacked; kernel_name is used in error messages.
LinuxBoot load_linux_image(const GuestMemory& mem, KernelImage& kernel, const Initrd& initrd,
                           const std::string& cmdline, const std::vector<E820Entry>& e820, uint64_t rsdp_addr,
                           const std::string& kernel_name = "the kernel", bool unpack_on_host = true,
                           const CacheDirs& cache = {}, const std::atomic<bool>* cancel = nullptr);
// The same from memory; kernel_file, when given, is the file the bytes are as if read from.
LinuxBoot load_linux_image(const GuestMemory& mem, std::span<const uint8_t> kernel, const Initrd& initrd,
                           const std::string& cmdline, const std::vector<E820Entry>& e820, uint64_t rsdp_addr,
                           const std::string& kernel_name = "the kernel", bool unpack_on_host = true,
                           const CacheDirs& cache = {}, const std::atomic<bool>* cancel = nullptr,
                           const FileIdentity* kernel_file = nullptr);

// What load_linux throws once *cancel is set (the machine's setup failed or was interrupted meanwhile).
struct LoadCancelled : std::runtime_error {
  LoadCancelled() : std::runtime_error("loading the kernel was cancelled") {}
};

// Zero page offsets passvm fills in (struct boot_params, arch/x86/include/uapi/asm/bootparam.h).
namespace zp {
inline constexpr size_t kAcpiRsdpAddr = 0x070;
inline constexpr size_t kExtRamdiskImage = 0x0c0;  // the initrd's address and size, bits 63:32
inline constexpr size_t kExtRamdiskSize = 0x0c4;
inline constexpr size_t kE820Entries = 0x1e8;
inline constexpr size_t kTypeOfLoader = 0x210;
inline constexpr size_t kLoadflags = 0x211;
inline constexpr size_t kCode32Start = 0x214;
inline constexpr size_t kRamdiskImage = 0x218;
inline constexpr size_t kRamdiskSize = 0x21c;
inline constexpr size_t kCmdLinePtr = 0x228;
inline constexpr size_t kE820Table = 0x2d0;
inline constexpr size_t kE820Max = 128;
inline constexpr size_t kE820EntrySize = 20;
}  // namespace zp

}  // namespace passvm::boot
