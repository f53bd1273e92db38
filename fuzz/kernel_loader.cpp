// Fuzz target: getting a kernel into guest RAM (src/boot). The first byte picks what the rest is:
//   0: a bzImage file (--kernel), loaded with passvm's unpacker (xz, gzip, uncompressed ELF) or, with
//      bit 2 set, for the guest's own decompressor;
//   1: the unpacked vmlinux (ELF) stream inside a bzImage, as the unpacker hands it over;
//   2: a kernel cache file (kernel_cache.h). passvm wrote it on an earlier boot, but anything may have
//      happened to it since (a crash while writing, a full disk, another program), so its content is
//      untrusted: a damaged file must be ignored, never half-loaded or written outside guest RAM.
// Everything lands in a real 32 MiB GuestMemory, whose bounds checks are the ones passvm relies on.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "boot/kernel_cache.h"
#include "boot/linux_boot.h"
#include "boot/test_image.h"
#include "memory/guest_memory.h"
#include "memory/layout.h"

namespace {

using namespace passvm;

// One guest for every run: mapping and unmapping 32 MiB per input would dominate, and nothing the loader
// does depends on what an earlier run left in guest RAM.
const GuestMemory& guest() {
  static GuestMemory mem(32 * layout::MiB, false);
  return mem;
}

const std::string& cache_dir() {
  static std::string dir = [] {
    char tmpl[] = "/tmp/passvm-fuzz-cache-XXXXXX";
    if (!mkdtemp(tmpl)) std::abort();
    std::string d = tmpl;
    static struct Remover {
      std::string d;
      ~Remover() { std::filesystem::remove_all(d); }
    } remover{d};
    return d;
  }();
  return dir;
}

void load(std::span<const uint8_t> kernel, bool unpack, const std::string& cache = "") {
  const GuestMemory& mem = guest();
  static const std::vector<uint8_t> initrd(5000, 0xab);
  boot::LinuxBoot b;
  try {
    b = boot::load_linux_image(mem, kernel, boot::Initrd::bytes(initrd), "console=ttyS0", boot::build_e820(mem),
                               0xe0000, "fuzz", unpack, cache);
  } catch (const std::runtime_error&) {
    return;  // a refusal, with a message for the user; anything else escaping is a bug
  }
  // A kernel that loads must be where the boot protocol puts it: above the first MiB, which holds the
  // zero page, the page tables and the command line, and below the initrd.
  const bool placed = b.kernel_addr >= layout::kHighMemStart && b.kernel_end > b.kernel_addr &&
                      b.kernel_end <= mem.size() && b.initrd_addr >= b.kernel_end;
  if (!placed) {
    std::fprintf(stderr, "kernel loaded at %#llx-%#llx, initrd at %#llx\n",
                 static_cast<unsigned long long>(b.kernel_addr), static_cast<unsigned long long>(b.kernel_end),
                 static_cast<unsigned long long>(b.initrd_addr));
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::span<const uint8_t> rest(data + 1, size - 1);
  switch (data[0] % 3) {
    case 0: load(rest, !(data[0] & 4)); break;
    case 1: {
      boot::testing::ImageSpec spec;
      spec.setup_sects = 1;
      load(boot::testing::bzimage_with_payload({rest.begin(), rest.end()}, static_cast<uint32_t>(rest.size())), true);
      break;
    }
    default: {
      // A kernel without a payload passvm can unpack: a cache miss boots it the classic way.
      static const std::vector<uint8_t> kernel = [] {
        boot::testing::ImageSpec spec;
        spec.setup_sects = 1;
        spec.kernel_bytes = 0x400;
        return boot::testing::make_bzimage(spec);
      }();
      const std::string path = boot::KernelCache(cache_dir(), kernel).path();
      {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(rest.data()), static_cast<std::streamsize>(rest.size()));
      }
      load(kernel, true, cache_dir());
      break;
    }
  }
  return 0;
}
