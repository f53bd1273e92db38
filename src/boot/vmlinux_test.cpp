#include "boot/vmlinux.h"

#include <gtest/gtest.h>

#include <atomic>

#include <cstring>
#include <filesystem>
#include <unistd.h>
#include <stdexcept>

#include "boot/linux_boot.h"
#include "boot/test_image.h"
#include "memory/layout.h"

namespace passvm::boot {
namespace {

using testing::bzimage_with_payload;
using testing::gz;
using testing::make_elf;
using testing::xz;

std::vector<uint8_t> pattern(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = static_cast<uint8_t>(i * 13 + 5);
  return v;
}

TEST(Vmlinux, PayloadFormatsByMagic) {
  EXPECT_EQ(payload_format(std::vector<uint8_t>{0xfd, '7', 'z', 'X', 'Z', 0, 1}), "xz");
  EXPECT_EQ(payload_format(std::vector<uint8_t>{0x1f, 0x8b, 8}), "gzip");
  EXPECT_EQ(payload_format(std::vector<uint8_t>{0x28, 0xb5, 0x2f, 0xfd}), "zstd");
  EXPECT_EQ(payload_format(std::vector<uint8_t>{1, 2, 3}), "unknown");
}

TEST(Vmlinux, ParsesSegmentsAndEntry) {
  auto elf = make_elf(16 * layout::MiB, pattern(100), 50, 16 * layout::MiB + 10);
  VmlinuxLayout v = parse_vmlinux_headers(elf, "test");
  ASSERT_EQ(v.segments.size(), 1u);
  EXPECT_EQ(v.segments[0].paddr, 16 * layout::MiB);
  EXPECT_EQ(v.segments[0].file_size, 100u);
  EXPECT_EQ(v.segments[0].mem_size, 150u);
  EXPECT_EQ(v.entry, 16 * layout::MiB + 10);
}

TEST(Vmlinux, RejectsMalformedElf) {
  EXPECT_THROW(parse_vmlinux_headers(pattern(200), "t"), std::runtime_error);
  EXPECT_THROW(parse_vmlinux_headers(make_elf(16 * layout::MiB, pattern(100), 0, 0x1234), "t"), std::runtime_error);
  // Headers fine, but the stream ends before the segment's bytes do.
  auto truncated = make_elf(16 * layout::MiB, pattern(100), 0, 16 * layout::MiB);
  truncated.resize(truncated.size() - 10);
  VmlinuxWriter w([](uint64_t, std::span<const uint8_t>) {}, [](const VmlinuxLayout&) {});
  w.feed(truncated);
  EXPECT_THROW(w.finish(), std::runtime_error);
}

TEST(Vmlinux, WriterPlacesSegmentBytesAcrossChunkBoundaries) {
  // Two segments; the stream arrives in odd-sized chunks so pieces straddle chunk and segment edges.
  auto text = pattern(200000);
  auto elf = make_elf(16 * layout::MiB, text, 0, 16 * layout::MiB);
  std::vector<uint8_t> guest(text.size(), 0);
  bool layout_seen = false;
  VmlinuxWriter w(
      [&](uint64_t paddr, std::span<const uint8_t> bytes) {
        ASSERT_TRUE(layout_seen);
        ASSERT_GE(paddr, 16 * layout::MiB);
        ASSERT_LE(paddr - 16 * layout::MiB + bytes.size(), guest.size());
        std::copy(bytes.begin(), bytes.end(), guest.begin() + static_cast<long>(paddr - 16 * layout::MiB));
      },
      [&](const VmlinuxLayout& l) {
        layout_seen = true;
        EXPECT_EQ(l.segments.size(), 1u);
      });
  for (size_t at = 0; at < elf.size(); at += 7777)
    w.feed(std::span<const uint8_t>(elf).subspan(at, std::min<size_t>(7777, elf.size() - at)));
  w.finish();
  EXPECT_EQ(guest, text);
}

TEST(Vmlinux, OnLayoutCanRefuseBeforeAnythingIsWritten) {
  auto elf = make_elf(16 * layout::MiB, pattern(100000), 0, 16 * layout::MiB);
  bool written = false;
  VmlinuxWriter w([&](uint64_t, std::span<const uint8_t>) { written = true; },
                  [](const VmlinuxLayout&) { throw std::runtime_error("no room"); });
  EXPECT_THROW(w.feed(elf), std::runtime_error);
  EXPECT_FALSE(written);
}

TEST(Vmlinux, UnpacksXzAndGzipPayloadsAndLoadsThem) {
  const uint64_t paddr = 16 * layout::MiB;
  auto text = pattern(300000);
  auto elf = make_elf(paddr, text, 4096, paddr + 0x40);
  for (bool use_xz : {true, false}) {
    auto img = bzimage_with_payload(use_xz ? xz(elf) : gz(elf), static_cast<uint32_t>(elf.size()));
    ASSERT_NO_THROW(parse_setup_header(img, "t"));

    GuestMemory mem(64 * layout::MiB, false);
    std::vector<uint8_t> junk(4096, 0xee);
    mem.write(paddr + text.size(), junk);  // bss must come out zeroed
    LinuxBoot b = load_linux_image(mem, img, {}, "", build_e820(mem), 0, "t", true);
    EXPECT_TRUE(b.unpacked_on_host);
    EXPECT_EQ(b.entry.rip, paddr + 0x40);
    std::vector<uint8_t> back(text.size() + 4096);
    mem.read(paddr, back);
    EXPECT_TRUE(std::equal(text.begin(), text.end(), back.begin()));
    for (size_t i = text.size(); i < back.size(); i++) ASSERT_EQ(back[i], 0) << i;
  }
}

TEST(Vmlinux, SecondBootComesFromTheCacheWithTheSameGuestImage) {
  char tmpl[] = "/tmp/passvm-vmlinux-cache-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  const uint64_t paddr = 16 * layout::MiB;
  auto text = pattern(500000);
  auto img = bzimage_with_payload(xz(make_elf(paddr, text, 8192, paddr + 0x40)), 0);
  GuestMemory first(64 * layout::MiB, false), second(64 * layout::MiB, false);
  LinuxBoot a = load_linux_image(first, img, {}, "", build_e820(first), 0, "t", true, dir);
  LinuxBoot b = load_linux_image(second, img, {}, "", build_e820(second), 0, "t", true, dir);
  EXPECT_FALSE(a.from_cache);
  EXPECT_TRUE(b.from_cache);
  EXPECT_TRUE(b.unpacked_on_host);
  EXPECT_EQ(a.entry.rip, b.entry.rip);
  std::vector<uint8_t> x(text.size() + 8192), y(text.size() + 8192);
  first.read(paddr, x);
  second.read(paddr, y);
  EXPECT_EQ(x, y);
  std::filesystem::remove_all(dir);
}

TEST(Vmlinux, UnknownCompressionFallsBackToGuestDecompressor) {
  auto img = bzimage_with_payload({0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4}, 100);
  SetupHeader h = parse_setup_header(img, "t");
  std::string why;
  VmlinuxWriter w([](uint64_t, std::span<const uint8_t>) {}, [](const VmlinuxLayout&) {});
  EXPECT_FALSE(unpack_bzimage(img, h, w, &why));
  EXPECT_NE(why.find("zstd"), std::string::npos);
  GuestMemory mem(64 * layout::MiB, false);
  LinuxBoot b = load_linux_image(mem, img, {}, "", build_e820(mem), 0, "t", true);
  EXPECT_FALSE(b.unpacked_on_host);
  EXPECT_EQ(b.entry.rip, b.kernel_addr + 0x200);
}

TEST(Vmlinux, CorruptPayloadIsAnError) {
  auto elf = make_elf(16 * layout::MiB, pattern(5000), 0, 16 * layout::MiB);
  auto packed = xz(elf);
  packed[packed.size() / 2] ^= 0xff;
  auto img = bzimage_with_payload(packed, static_cast<uint32_t>(elf.size()));
  SetupHeader h = parse_setup_header(img, "t");
  std::string why;
  VmlinuxWriter w([](uint64_t, std::span<const uint8_t>) {}, [](const VmlinuxLayout&) {});
  EXPECT_THROW(unpack_bzimage(img, h, w, &why), std::runtime_error);
}

TEST(Vmlinux, CacheAddAheadOfTimeMakesTheFirstBootAHitFromTheSharedDirectory) {
  namespace fs = std::filesystem;
  char tmpl[] = "/tmp/passvm-vmlinux-shared-XXXXXX";
  fs::path root = mkdtemp(tmpl);
  const uint64_t paddr = 16 * layout::MiB;
  auto text = pattern(400000);
  auto img = bzimage_with_payload(xz(make_elf(paddr, text, 4096, paddr + 0x40)), 0);
  const fs::path shared = root / "shared", own = root / "own";
  std::string path = KernelCache::add(shared.string(), img, "t");
  EXPECT_TRUE(fs::exists(path));
  EXPECT_EQ(fs::status(path).permissions() & fs::perms::others_read, fs::perms::others_read);
  EXPECT_EQ(KernelCache::add(shared.string(), img, "t"), path);  // a second add keeps the entry

  // A user whose own cache is empty boots from the shared entry, and writes nothing of their own.
  GuestMemory mem(64 * layout::MiB, false);
  LinuxBoot b = load_linux_image(mem, img, {}, "", build_e820(mem), 0, "t", true, CacheDirs{own.string(), shared.string()});
  EXPECT_TRUE(b.from_cache);
  EXPECT_EQ(b.cache_file, path);
  EXPECT_EQ(b.entry.rip, paddr + 0x40);
  std::vector<uint8_t> back(text.size());
  mem.read(paddr, back);
  EXPECT_EQ(back, text);
  EXPECT_FALSE(fs::exists(own));

  // A shared directory others may write to could hold anything: it is not used.
  fs::permissions(shared, fs::perms::others_write, fs::perm_options::add);
  GuestMemory again(64 * layout::MiB, false);
  LinuxBoot c = load_linux_image(again, img, {}, "", build_e820(again), 0, "t", true, CacheDirs{"", shared.string()});
  EXPECT_FALSE(c.from_cache);
  EXPECT_TRUE(c.unpacked_on_host);
  fs::remove_all(root);
}

TEST(Vmlinux, CacheAddRefusesAKernelItCannotUnpackNamingWhy) {
  char tmpl[] = "/tmp/passvm-vmlinux-add-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  auto zstd = bzimage_with_payload({0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4}, 100);
  try {
    KernelCache::add(dir, zstd, "bzImage-zstd");
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("zstd"), std::string::npos) << e.what();
  }
  EXPECT_THROW(KernelCache::add(dir, std::vector<uint8_t>(4096, 0), "not-a-kernel"), std::runtime_error);
  std::filesystem::remove_all(dir);
}

TEST(Vmlinux, ACancelledLoadStopsWithLoadCancelled) {
  const uint64_t paddr = 16 * layout::MiB;
  auto img = bzimage_with_payload(xz(make_elf(paddr, pattern(300000), 0, paddr)), 0);
  GuestMemory mem(64 * layout::MiB, false);
  std::atomic<bool> cancel{true};
  EXPECT_THROW(load_linux_image(mem, img, {}, "", build_e820(mem), 0, "t", true, {}, &cancel), LoadCancelled);
  cancel = false;
  EXPECT_TRUE(load_linux_image(mem, img, {}, "", build_e820(mem), 0, "t", true, {}, &cancel).unpacked_on_host);
}

}  // namespace
}  // namespace passvm::boot
