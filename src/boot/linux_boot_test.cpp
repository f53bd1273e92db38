#include "boot/linux_boot.h"

#include <gtest/gtest.h>

#include <lzma.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <thread>

#include "boot/test_image.h"
#include "boot/vmlinux.h"
#include "memory/layout.h"

namespace passvm::boot {
namespace {

using layout::GiB;
using layout::MiB;
using testing::ImageSpec;
using testing::make_bzimage;

template <typename T>
T peek(const GuestMemory& mem, uint64_t gpa) {
  T v{};
  mem.read(gpa, std::span(reinterpret_cast<uint8_t*>(&v), sizeof v));
  return v;
}

std::string load_error(const GuestMemory& mem, const std::vector<uint8_t>& img, const std::vector<uint8_t>& initrd,
                       const std::string& cmdline) {
  try {
    load_linux_image(mem, img, Initrd::bytes(initrd), cmdline, build_e820(mem), 0, "test.img");
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(LoadLinux, PlacesKernelInitrdCmdlineAndZeroPage) {
  GuestMemory mem(64 * MiB, false);
  ImageSpec s;
  auto img = make_bzimage(s);
  std::vector<uint8_t> initrd(10000, 0xab);
  auto e820 = build_e820(mem);
  LinuxBoot b = load_linux_image(mem, img, Initrd::bytes(initrd), "console=ttyS0 root=/dev/ram0", e820, 0xe0000);

  EXPECT_EQ(b.kernel_addr, 0x1000000u);
  EXPECT_EQ(b.kernel_end, 0x1000000u + s.init_size);
  // The protected-mode part (after the setup sectors) is what lands at the load address.
  EXPECT_EQ(peek<uint8_t>(mem, b.kernel_addr), img[5 * 512]);
  EXPECT_EQ(peek<uint8_t>(mem, b.kernel_addr + 0x1234), img[5 * 512 + 0x1234]);

  // Initrd: page aligned, as high as RAM allows, above the kernel.
  EXPECT_EQ(b.initrd_addr % 4096, 0u);
  EXPECT_LE(b.initrd_addr + b.initrd_size, 64 * MiB);
  EXPECT_GT(b.initrd_addr + b.initrd_size + 4096, 64 * MiB);
  EXPECT_EQ(peek<uint8_t>(mem, b.initrd_addr + 9999), 0xab);

  const uint64_t zp = layout::kBootParamsAddr;
  EXPECT_EQ(b.zero_page, zp);
  EXPECT_EQ(peek<uint32_t>(mem, zp + 0x202), 0x53726448u);  // the setup header was copied
  EXPECT_EQ(peek<uint8_t>(mem, zp + zp::kTypeOfLoader), 0xff);
  EXPECT_EQ(peek<uint32_t>(mem, zp + zp::kCode32Start), b.kernel_addr);
  EXPECT_EQ(peek<uint32_t>(mem, zp + zp::kRamdiskImage), b.initrd_addr);
  EXPECT_EQ(peek<uint32_t>(mem, zp + zp::kRamdiskSize), 10000u);
  EXPECT_EQ(peek<uint32_t>(mem, zp + zp::kCmdLinePtr), layout::kCmdlineAddr);
  EXPECT_EQ(peek<uint64_t>(mem, zp + zp::kAcpiRsdpAddr), 0xe0000u);
  char line[32] = {};
  mem.read(layout::kCmdlineAddr, std::span(reinterpret_cast<uint8_t*>(line), 30));
  EXPECT_STREQ(line, "console=ttyS0 root=/dev/ram0");

  ASSERT_EQ(peek<uint8_t>(mem, zp + zp::kE820Entries), e820.size());
  for (size_t i = 0; i < e820.size(); i++) {
    uint64_t at = zp + zp::kE820Table + i * zp::kE820EntrySize;
    EXPECT_EQ(peek<uint64_t>(mem, at), e820[i].addr);
    EXPECT_EQ(peek<uint64_t>(mem, at + 8), e820[i].size);
    EXPECT_EQ(peek<uint32_t>(mem, at + 16), static_cast<uint32_t>(e820[i].type));
  }

  // 64-bit entry registers and the structures they point at.
  EXPECT_EQ(b.entry.rip, b.kernel_addr + 0x200);
  EXPECT_EQ(b.entry.rsi, zp);
  EXPECT_EQ(b.entry.cr3, layout::kPml4Addr);
  EXPECT_TRUE(b.entry.cr0 & kCr0Pg);
  EXPECT_TRUE(b.entry.cr0 & kCr0Pe);
  EXPECT_TRUE(b.entry.cr4 & kCr4Pae);
  EXPECT_EQ(b.entry.efer & (kEferLme | kEferLma), kEferLme | kEferLma);
}

TEST(LoadLinux, LoadAddressBelowOneMibOrWrappingIsRefused) {
  GuestMemory mem(64 * MiB, false);
  ImageSpec s;
  s.pref_address = ~uint64_t{0};  // aligned up to 2 MiB, it wraps to 0
  EXPECT_NE(load_error(mem, make_bzimage(s), {}, "").find("below 1 MiB"), std::string::npos);
  s.relocatable = 0;
  s.pref_address = 0x10000;
  EXPECT_NE(load_error(mem, make_bzimage(s), {}, "").find("below 1 MiB"), std::string::npos);
  s.pref_address = ~uint64_t{0} - 0xfff;  // the footprint wraps into RAM
  EXPECT_NE(load_error(mem, make_bzimage(s), {}, "").find("does not have"), std::string::npos);
}

TEST(LoadLinux, RsdpOnlyForProtocol214AndUp) {
  GuestMemory mem(64 * MiB, false);
  ImageSpec s;
  s.version = 0x020d;
  load_linux_image(mem, make_bzimage(s), Initrd{}, "", build_e820(mem), 0xe0000);
  EXPECT_EQ(peek<uint64_t>(mem, layout::kBootParamsAddr + zp::kAcpiRsdpAddr), 0u);
}

TEST(LoadLinux, HonoursKernelAlignment) {
  GuestMemory mem(64 * MiB, false);
  ImageSpec s;
  s.pref_address = 0x1100000;
  s.kernel_alignment = 0x400000;
  LinuxBoot b = load_linux_image(mem, make_bzimage(s), Initrd{}, "", build_e820(mem), 0);
  EXPECT_EQ(b.kernel_addr, 0x1400000u);
  EXPECT_EQ(b.initrd_addr, 0u);
  EXPECT_EQ(peek<uint32_t>(mem, layout::kBootParamsAddr + zp::kRamdiskSize), 0u);
}

TEST(LoadLinux, IdentityPageTablesMapFirstFourGiB) {
  GuestMemory mem(16 * MiB, false);
  setup_long_mode(mem, 0x100000, 0);
  EXPECT_EQ(peek<uint64_t>(mem, layout::kPml4Addr), layout::kPdptAddr | 3);
  for (uint64_t i = 0; i < 4; i++) EXPECT_EQ(peek<uint64_t>(mem, layout::kPdptAddr + i * 8), (layout::kPdAddr + i * 4096) | 3);
  // Last 2 MiB page of the fourth GiB.
  EXPECT_EQ(peek<uint64_t>(mem, layout::kPdAddr + 3 * 4096 + 511 * 8), (4ull * 1024 - 2) * MiB | 0x83);
  EXPECT_EQ(peek<uint64_t>(mem, layout::kGdtAddr + 0x10), 0x00af9b000000ffffull);
  EXPECT_EQ(peek<uint64_t>(mem, layout::kGdtAddr + 0x18), 0x00cf93000000ffffull);
}

TEST(LoadLinux, KernelThatDoesNotFit) {
  GuestMemory mem(16 * MiB, false);  // pref_address is 16 MiB: nothing left
  EXPECT_NE(load_error(mem, make_bzimage({}), {}, "").find("give it more memory"), std::string::npos);
}

TEST(LoadLinux, InitrdThatDoesNotFit) {
  GuestMemory mem(32 * MiB, false);
  std::vector<uint8_t> initrd(13 * MiB, 1);  // kernel uses 16..20 MiB, leaving 12 MiB
  EXPECT_NE(load_error(mem, make_bzimage({}), initrd, "").find("initrd (13 MiB) does not fit"), std::string::npos);
}

TEST(LoadLinux, InitrdBelowInitrdAddrMax) {
  GuestMemory mem(64 * MiB, false);
  ImageSpec s;
  s.initrd_addr_max = 0x2ffffff;  // 48 MiB - 1
  std::vector<uint8_t> initrd(8192, 2);
  LinuxBoot b = load_linux_image(mem, make_bzimage(s), Initrd::bytes(initrd), "", build_e820(mem), 0);
  EXPECT_EQ(b.initrd_addr, 0x3000000u - 8192);
}

TEST(LoadLinux, AnInitrdTooBigForLowRamGoesAbove4GiBWhenTheKernelAllowsIt) {
  GuestMemory mem(3 * GiB + 64 * MiB, false);  // MAP_NORESERVE: only what is written is allocated
  ImageSpec s;
  s.initrd_addr_max = 0x2ffffff;  // 48 MiB - 1: 28 MiB above the kernel
  std::vector<uint8_t> initrd(40 * MiB, 3);
  initrd.back() = 4;
  LinuxBoot b = load_linux_image(mem, make_bzimage(s), Initrd::bytes(initrd), "", build_e820(mem), 0);
  EXPECT_EQ(b.initrd_addr, 4 * GiB + 24 * MiB) << "the top of RAM above 4 GiB";
  EXPECT_EQ(peek<uint8_t>(mem, b.initrd_addr + initrd.size() - 1), 4);
  const uint64_t zp = layout::kBootParamsAddr;
  EXPECT_EQ(peek<uint32_t>(mem, zp + zp::kRamdiskImage), static_cast<uint32_t>(b.initrd_addr));
  EXPECT_EQ(peek<uint32_t>(mem, zp + zp::kExtRamdiskImage), 1u);
  EXPECT_EQ(peek<uint32_t>(mem, zp + zp::kRamdiskSize), 40 * MiB);
  EXPECT_EQ(peek<uint32_t>(mem, zp + zp::kExtRamdiskSize), 0u);

  // A kernel without XLF_CAN_BE_LOADED_ABOVE_4G: refused, saying why.
  s.xloadflags = 0x1;
  EXPECT_NE(load_error(mem, make_bzimage(s), initrd, "").find("this kernel cannot take one above 4 GiB"),
            std::string::npos);
}

TEST(LoadLinux, CommandLineTooLong) {
  GuestMemory mem(64 * MiB, false);
  ImageSpec s;
  s.cmdline_size = 10;
  auto img = make_bzimage(s);
  EXPECT_EQ(load_error(mem, img, {}, std::string(10, 'x')), "");
  EXPECT_NE(load_error(mem, img, {}, std::string(11, 'x')).find("at most 10"), std::string::npos);
}

TEST(LoadLinux, MissingFiles) {
  GuestMemory mem(64 * MiB, false);
  try {
    load_linux(mem, "/nonexistent/bzImage", "", "", build_e820(mem), 0);
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("kernel file /nonexistent/bzImage not found"), std::string::npos);
  }
}

// A FIFO given as the kernel (a process substitution, say) is refused at once, not waited on forever.
TEST(LoadLinux, FifoIsRefusedNotWaitedOn) {
  GuestMemory mem(64 * MiB, false);
  std::string fifo = (std::filesystem::temp_directory_path() / ("passvm-fifo-" + std::to_string(getpid()))).string();
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  // A writer waiting to open it: an open for reading (what opening a device given by mistake would be)
  // lets it through. The path is refused before it is opened.
  std::atomic<bool> writer_in{false};
  std::thread writer([&] {
    int w = ::open(fifo.c_str(), O_WRONLY | O_CLOEXEC);
    writer_in = true;
    if (w >= 0) close(w);
  });
  try {
    load_linux(mem, fifo, "", "", build_e820(mem), 0);
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("is not a regular file"), std::string::npos) << e.what();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(writer_in) << "the FIFO was opened before it was refused";
  int release = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  writer.join();
  if (release >= 0) close(release);
  unlink(fifo.c_str());
}

// From files: the initrd is read straight into guest RAM, byte for byte; a missing one is named.
TEST(LoadLinux, InitrdFromFile) {
  namespace fs = std::filesystem;
  GuestMemory mem(64 * MiB, false);
  fs::path dir = fs::temp_directory_path() / ("passvm-initrd-" + std::to_string(getpid()));
  fs::create_directories(dir);
  auto put = [&](const char* name, const std::vector<uint8_t>& bytes) {
    FILE* f = fopen((dir / name).c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
    fclose(f);
  };
  std::vector<uint8_t> initrd(3 * MiB + 123);
  for (size_t i = 0; i < initrd.size(); i++) initrd[i] = static_cast<uint8_t>(i * 7 + (i >> 12));
  put("bzImage", make_bzimage({}));
  put("initrd", initrd);
  LinuxBoot b = load_linux(mem, dir / "bzImage", dir / "initrd", "", build_e820(mem), 0, false);
  ASSERT_EQ(b.initrd_size, initrd.size());
  std::vector<uint8_t> back(initrd.size());
  mem.read(b.initrd_addr, back);
  EXPECT_TRUE(back == initrd);
  try {
    load_linux(mem, dir / "bzImage", dir / "missing", "", build_e820(mem), 0, false);
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("initrd file " + (dir / "missing").string() + " not found"),
              std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

std::string host_kernel() {
  namespace fs = std::filesystem;
  std::error_code ec;
  for (const auto& f : fs::directory_iterator("/boot", ec))
    if (f.path().filename().string().starts_with("vmlinuz-")) return f.path().string();
  return "";
}

TEST(LoadLinux, RealHostKernel) {
  std::string path = host_kernel();
  if (path.empty()) GTEST_SKIP() << "no /boot/vmlinuz-* on this machine";
  auto bytes = read_boot_file(path, "kernel");
  SetupHeader h = parse_setup_header(bytes, path);
  EXPECT_GE(h.version, 0x020c);
  EXPECT_GE(h.init_size, h.kernel_size);
  GuestMemory mem(256 * MiB, false);
  std::vector<uint8_t> initrd(1 * MiB, 3);
  LinuxBoot b = load_linux_image(mem, bytes, Initrd::bytes(initrd), "console=ttyS0", build_e820(mem), 0, path, false);
  EXPECT_FALSE(b.unpacked_on_host);
  EXPECT_EQ(b.kernel_addr % (h.kernel_alignment ? h.kernel_alignment : 1), 0u);
  EXPECT_EQ(b.kernel_addr, h.pref_address);
  std::vector<uint8_t> back(h.kernel_size);
  mem.read(b.kernel_addr, back);
  EXPECT_TRUE(std::equal(back.begin(), back.end(), bytes.begin() + static_cast<long>(h.kernel_offset)));
  EXPECT_GE(b.initrd_addr, b.kernel_end);
  EXPECT_EQ(b.entry.rip, b.kernel_addr + 0x200);
}

TEST(LoadLinux, RealHostKernelUnpackedOnHost) {
  std::string path = host_kernel();
  if (path.empty()) GTEST_SKIP() << "no /boot/vmlinuz-* on this machine";
  auto bytes = read_boot_file(path, "kernel");
  SetupHeader h = parse_setup_header(bytes, path);
  // An independent, one-shot unpack of the payload to compare with what the streaming loader placed.
  uint32_t off = 0, len = 0;
  std::memcpy(&off, bytes.data() + 0x248, 4);
  std::memcpy(&len, bytes.data() + 0x24c, 4);
  std::span<const uint8_t> payload(bytes.data() + h.kernel_offset + off, len);
  if (payload_format(payload) != "xz") GTEST_SKIP() << path << " is not xz-compressed";
  std::vector<uint8_t> elf(256 * MiB);
  size_t in_pos = 0, out_pos = 0;
  uint64_t memlimit = UINT64_MAX;
  ASSERT_EQ(lzma_stream_buffer_decode(&memlimit, 0, nullptr, payload.data(), &in_pos, payload.size() - 4, elf.data(),
                                      &out_pos, elf.size()),
            LZMA_OK);
  elf.resize(out_pos);
  VmlinuxLayout expect = parse_vmlinux_headers(elf, path);

  GuestMemory mem(256 * MiB, false);
  std::vector<uint8_t> initrd(1 * MiB, 3);
  LinuxBoot b = load_linux_image(mem, bytes, Initrd::bytes(initrd), "console=ttyS0", build_e820(mem), 0, path, true);
  EXPECT_TRUE(b.unpacked_on_host) << b.unpack_note;
  EXPECT_EQ(b.entry.rip, expect.entry);
  EXPECT_NE(b.entry.rip, b.kernel_addr + 0x200);
  for (const auto& seg : expect.segments) {
    std::vector<uint8_t> back(seg.mem_size);
    mem.read(seg.paddr, back);
    EXPECT_TRUE(std::equal(back.begin(), back.begin() + static_cast<long>(seg.file_size),
                           elf.begin() + static_cast<long>(seg.file_offset)));
    EXPECT_TRUE(std::all_of(back.begin() + static_cast<long>(seg.file_size), back.end(), [](uint8_t v) { return v == 0; }));
    EXPECT_GE(b.initrd_addr, seg.paddr + seg.mem_size);
  }
}

}  // namespace
}  // namespace passvm::boot
