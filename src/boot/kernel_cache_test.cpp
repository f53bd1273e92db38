#include "boot/kernel_cache.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>

namespace passvm::boot {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/passvm-cache-test-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
};

VmlinuxLayout sample_layout() {
  VmlinuxLayout l;
  l.entry = 0x1000040;
  l.segments = {{0x1000000, 0x1000, 300, 400}, {0x2000000, 0x2000, 5000, 8192}};
  return l;
}

// Records two segments' bytes the way the unpacker would, and commits.
void record_kernel(KernelCache& c, const std::map<uint64_t, std::vector<uint8_t>>& pieces) {
  for (const auto& [paddr, bytes] : pieces) c.record(paddr, bytes);
  c.commit(sample_layout());
}

std::map<uint64_t, std::vector<uint8_t>> sample_pieces() {
  std::vector<uint8_t> a(300), b(5000);
  for (size_t i = 0; i < a.size(); i++) a[i] = static_cast<uint8_t>(i * 3);
  for (size_t i = 0; i < b.size(); i++) b[i] = static_cast<uint8_t>(i * 7 + 1);
  return {{0x1000000, a}, {0x2000000, b}};
}

// Whether the entry for bzimage loads, or writes anything trying.
bool loads(const fs::path& dir, const std::vector<uint8_t>& bzimage) {
  bool wrote = false;
  KernelCache c(dir.string(), bzimage);
  bool hit = c.load([&](uint64_t, std::span<const uint8_t>) { wrote = true; }, [](const VmlinuxLayout&) {}).has_value();
  return hit || wrote;
}

TEST(KernelCache, MissThenRecordThenHitGivesTheSameBytes) {
  TempDir dir;
  std::vector<uint8_t> bzimage(1000, 9);
  auto pieces = sample_pieces();
  std::map<uint64_t, std::vector<uint8_t>> loaded;
  auto write = [&](uint64_t paddr, std::span<const uint8_t> bytes) {
    auto& v = loaded[paddr];
    v.insert(v.end(), bytes.begin(), bytes.end());
  };
  auto accept = [](const VmlinuxLayout&) {};
  {
    KernelCache c(dir.path.string(), bzimage);
    EXPECT_FALSE(c.load(write, accept).has_value());
    record_kernel(c, pieces);
  }
  KernelCache c(dir.path.string(), bzimage);
  auto layout = c.load(write, accept);
  ASSERT_TRUE(layout.has_value());
  EXPECT_EQ(layout->entry, 0x1000040u);
  ASSERT_EQ(layout->segments.size(), 2u);
  EXPECT_EQ(layout->segments[1].mem_size, 8192u);
  EXPECT_EQ(loaded, pieces);

  // Another bzImage is another entry.
  std::vector<uint8_t> other(1000, 8);
  KernelCache c2(dir.path.string(), other);
  EXPECT_FALSE(c2.load(write, accept).has_value());
}

TEST(KernelCache, WholeZeroPagesAreNeitherStoredNorWritten) {
  TempDir dir;
  std::vector<uint8_t> bzimage(1000, 5);
  constexpr uint64_t base = 0x3000000, page = 4096;
  // Pages 1 and 3 are zeros; page 4 is zeros but for one byte; the pieces split pages 2 and 3 (as the
  // unpacker's output chunks fall anywhere), so page 3 is whole only across two pieces.
  std::vector<uint8_t> image(5 * page + 100);
  for (size_t i = 0; i < image.size(); i++) image[i] = static_cast<uint8_t>(i % 251 + 1);
  std::fill_n(image.begin() + page, page, 0);
  std::fill_n(image.begin() + 3 * page, 2 * page, 0);
  image[4 * page + 7] = 1;
  const size_t split = 3 * page + 1000;
  VmlinuxLayout layout;
  layout.entry = base;
  layout.segments = {{base, 0x1000, image.size(), image.size()}};
  {
    KernelCache c(dir.path.string(), bzimage);
    c.record(base, std::span(image).first(split));
    c.record(base + split, std::span(image).subspan(split));
    c.commit(layout);
  }
  ASSERT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator{}), 1);
  const auto entry_size = fs::file_size(fs::directory_iterator(dir.path)->path());
  EXPECT_LT(entry_size, image.size() - page + 256) << "page 1 is not stored (256: headers and trailer)";
  EXPECT_GT(entry_size, image.size() - 2 * page) << "page 3, split between pieces, is stored";

  std::vector<uint8_t> ram(image.size(), 0);  // fresh guest RAM
  std::vector<std::pair<uint64_t, uint64_t>> written;
  KernelCache c(dir.path.string(), bzimage);
  auto got = c.load([](uint64_t, std::span<const uint8_t>) { ADD_FAILURE() << "dest gives memory"; },
                    [](const VmlinuxLayout&) {},
                    [&](uint64_t paddr, uint64_t length) {
                      written.emplace_back(paddr - base, length);
                      return ram.data() + (paddr - base);
                    });
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(ram, image);
  for (auto [off, len] : written)
    EXPECT_TRUE(off + len <= page || off >= 2 * page) << "page 1 written at " << off << "+" << len;
}

TEST(KernelCache, DamagedOrUnfinishedEntriesAreIgnoredAndRemoved) {
  TempDir dir;
  std::vector<uint8_t> bzimage(1000, 9);
  std::string path;
  {
    KernelCache c(dir.path.string(), bzimage);
    record_kernel(c, sample_pieces());
    path = c.path();
  }
  fs::resize_file(path, fs::file_size(path) - 3);  // trailer cut: not a complete entry
  EXPECT_FALSE(loads(dir.path, bzimage));
  EXPECT_FALSE(fs::exists(path));

  // A recording that is abandoned (never committed) leaves nothing behind.
  {
    KernelCache r(dir.path.string(), bzimage);
    r.record(0x1000000, std::vector<uint8_t>(10, 1));
  }
  EXPECT_TRUE(fs::is_empty(dir.path));
}

TEST(KernelCache, RecordOutsideTheSegmentsIsADamagedEntry) {
  // on_layout approves the segments only: a record elsewhere (here below the first segment, where the
  // zero page and page tables live) would write guest memory nobody checked.
  TempDir dir;
  std::vector<uint8_t> bzimage(1000, 9);
  std::string path;
  {
    KernelCache c(dir.path.string(), bzimage);
    c.record(0x7000, std::vector<uint8_t>(16, 0xee));
    c.commit(sample_layout());
    path = c.path();
  }
  EXPECT_FALSE(loads(dir.path, bzimage));
  EXPECT_FALSE(fs::exists(path));

  // A segment that wraps around the address space passes a bounds check of its start and end.
  {
    KernelCache w(dir.path.string(), bzimage);
    VmlinuxLayout l;
    l.entry = 0;
    l.segments = {{0xfffffffffffff000, 0, 0, 0x2000}};
    w.record(0xfffffffffffff000, {});
    w.commit(l);
  }
  EXPECT_FALSE(loads(dir.path, bzimage));
}

TEST(KernelCache, RefusedLayoutWritesNothing) {
  TempDir dir;
  std::vector<uint8_t> bzimage(1000, 9);
  {
    KernelCache c(dir.path.string(), bzimage);
    record_kernel(c, sample_pieces());
  }
  bool wrote = false;
  KernelCache c(dir.path.string(), bzimage);
  EXPECT_THROW(c.load([&](uint64_t, std::span<const uint8_t>) { wrote = true; },
                      [](const VmlinuxLayout&) { throw std::runtime_error("too small a guest"); }),
               std::runtime_error);
  EXPECT_FALSE(wrote);
}

TEST(KernelCache, DisabledCacheNeverHitsNorWrites) {
  std::vector<uint8_t> bzimage(1000, 9);
  KernelCache c("", bzimage);
  c.record(0x1000000, std::vector<uint8_t>(10, 1));
  c.commit(sample_layout());
  EXPECT_FALSE(c.load([](uint64_t, std::span<const uint8_t>) {}, [](const VmlinuxLayout&) {}).has_value());
}

TEST(KernelCache, KeepsOnlyTheNewestFew) {
  TempDir dir;
  for (int i = 0; i < 7; i++) {
    std::vector<uint8_t> bzimage(1000, static_cast<uint8_t>(i));
    KernelCache c(dir.path.string(), bzimage);
    record_kernel(c, sample_pieces());
  }
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) n += e.path().extension() == ".unpacked";
  EXPECT_EQ(n, 4u);
}

}  // namespace
}  // namespace passvm::boot
