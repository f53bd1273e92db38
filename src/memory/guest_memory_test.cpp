#include "memory/guest_memory.h"

#include <gtest/gtest.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <string>
#include <stdexcept>

#include "memory/layout.h"

namespace passvm {
namespace {

TEST(GuestMemory, SmallGuestIsOneLowRegion) {
  GuestMemory mem(64 * layout::MiB, false);
  ASSERT_EQ(mem.regions().size(), 1u);
  EXPECT_EQ(mem.regions()[0].gpa, 0u);
  EXPECT_EQ(mem.regions()[0].size, 64 * layout::MiB);
}

TEST(GuestMemory, RangeChecksRejectOutsideRam) {
  GuestMemory mem(16 * layout::MiB, false);
  std::array<uint8_t, 8> buf{1, 2, 3, 4, 5, 6, 7, 8};
  mem.write(16 * layout::MiB - 8, buf);
  std::array<uint8_t, 8> back{};
  mem.read(16 * layout::MiB - 8, back);
  EXPECT_EQ(buf, back);
  EXPECT_THROW(mem.write(16 * layout::MiB - 4, buf), std::out_of_range);
  EXPECT_THROW(mem.read(~0ull - 2, back), std::out_of_range);
  EXPECT_EQ(mem.host_address(16 * layout::MiB, 1), nullptr);
}

uint64_t allocated_bytes(const GuestMemory& mem) { return mem.page_usage().resident; }

// Populating allocates every page of the memfd, in parallel, without changing a byte.
TEST(GuestMemory, PopulateAllocatesEveryPageAndKeepsContents) {
  const uint64_t size = 200 * layout::MiB;  // not a multiple of the 64 MiB unit of work
  GuestMemory mem(size, false);
  std::array<uint8_t, 4> mark{0xde, 0xad, 0xbe, 0xef};
  mem.write(size - 4, mark);
  EXPECT_LT(allocated_bytes(mem), size / 2) << "pages are allocated on first touch";
  EXPECT_EQ(mem.populate(3), 3u);
  EXPECT_EQ(allocated_bytes(mem), size);
  std::array<uint8_t, 4> back{};
  mem.read(size - 4, back);
  EXPECT_EQ(back, mark);
  mem.read(100 * layout::MiB, back);
  EXPECT_EQ(back, (std::array<uint8_t, 4>{}));
  GuestMemory small(16 * layout::MiB, false);
  EXPECT_EQ(small.populate(8), 16 * layout::MiB / small.populate_chunk()) << "no more threads than units of work";
}

// By default one worker per CPU this process may use, and the caller's own CPU mask is left alone.
TEST(GuestMemory, PopulateUsesAWorkerPerAllowedCpuAndLeavesTheCallersAffinity) {
  cpu_set_t before, after;
  ASSERT_EQ(sched_getaffinity(0, sizeof before, &before), 0);
  const uint64_t size = 128 * layout::MiB;
  GuestMemory mem(size, false);
  const size_t cpus = allowed_cpus().size();
  ASSERT_EQ(cpus, static_cast<size_t>(CPU_COUNT(&before)));
  EXPECT_EQ(mem.populate(), std::min<size_t>(cpus, size / mem.populate_chunk()));
  EXPECT_EQ(allocated_bytes(mem), size);
  ASSERT_EQ(sched_getaffinity(0, sizeof after, &after), 0);
  EXPECT_TRUE(CPU_EQUAL(&before, &after));
}

// A host that lets passvm start fewer threads than it asks for (a task limit) gets its RAM allocated by
// the workers that did start, or a clear error when none could: never an abort. Run in a child with
// RLIMIT_NPROC at its own task count, as an unprivileged user (root is exempt from the limit).
TEST(GuestMemory, PopulateUnderATaskLimitUsesTheThreadsItGetsOrSaysWhy) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to become a user the task limit applies to";
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(10);
    // The nobody account may run other tasks on this host: the limit is what it runs now (this child
    // among them) plus one, so that one worker starts and the next cannot.
    int tasks = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc")) {
      struct stat st {};
      if (std::isdigit(static_cast<unsigned char>(e.path().filename().string()[0])) &&
          stat(e.path().c_str(), &st) == 0 && st.st_uid == 65534)
        tasks++;
    }
    rlimit one{static_cast<rlim_t>(tasks + 1), static_cast<rlim_t>(tasks + 1)};
    if (setrlimit(RLIMIT_NPROC, &one) != 0) _exit(11);
    try {
      GuestMemory mem(64 * layout::MiB, false);  // made here: guest RAM is not inherited by a fork
      mem.populate(4);
      _exit(allocated_bytes(mem) == 64 * layout::MiB ? 0 : 12);
    } catch (const std::runtime_error& e) {
      if (std::string(e.what()).find("limit on tasks") != std::string::npos) _exit(0);
      fprintf(stderr, "%s\n", e.what());
      _exit(13);
    }
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// A setup that fails while RAM is being allocated ahead stops the workers at their next unit of work.
TEST(GuestMemory, CancelledPopulateStopsAndSaysSo) {
  const uint64_t size = 8 * 64 * layout::MiB;
  GuestMemory mem(size, false);
  std::atomic<bool> cancel{true};
  EXPECT_THROW(mem.populate(2, &cancel), std::runtime_error);
  EXPECT_LT(allocated_bytes(mem), size / 2);
}

// Guest-physical 2 MiB frames map to 2 MiB-aligned host memory, so each can be one huge page.
TEST(GuestMemory, RamIsHugePageAligned) {
  GuestMemory mem(64 * layout::MiB + 4096, false);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(mem.host_address(0, 1)) % (2 * layout::MiB), 0u);
  std::array<uint8_t, 4> mark{1, 2, 3, 4};
  mem.write(64 * layout::MiB + 4092, mark);  // the last bytes are mapped
}

std::string thp_setting() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  std::getline(f, line);
  return line;
}

// Where the host allows transparent huge pages, guest RAM gets them, and smaps says so.
TEST(GuestMemory, DefaultRamIsOnTransparentHugePages) {
  GuestMemory mem(64 * layout::MiB, false);
  const std::string thp = thp_setting();
  if (thp.empty() || thp.find("[never]") != std::string::npos) {
    EXPECT_FALSE(mem.small_pages_reason().empty());
    EXPECT_EQ(mem.backing(), "4 KiB pages");
    GTEST_SKIP() << "transparent huge pages are off here: " << thp;
  }
  EXPECT_TRUE(mem.small_pages_reason().empty()) << mem.small_pages_reason();
  EXPECT_EQ(mem.backing(), "transparent huge pages");
  mem.populate(2);
  PageUsage u = mem.page_usage();
  EXPECT_EQ(u.resident, 64 * layout::MiB);
  // khugepaged is not involved: the faults themselves take huge pages, unless memory is too fragmented.
  EXPECT_GT(u.huge, 32 * layout::MiB) << u.describe();
  EXPECT_EQ(u.page_size, 2 * layout::MiB);
}

constexpr const char* kSmaps =
    "7f0000000000-7f0000200000 rw-p 00000000 00:00 0 \n"
    "Size:               2048 kB\n"
    "KernelPageSize:        4 kB\n"
    "Rss:                2048 kB\n"
    "AnonHugePages:      2048 kB\n"
    "7f0000200000-7f0020200000 rw-p 00000000 00:00 0 \n"
    "Size:             524288 kB\n"
    "KernelPageSize:        4 kB\n"
    "Rss:              524288 kB\n"
    "AnonHugePages:    520192 kB\n"
    "VmFlags: rd wr mr mw me ac hg dc\n"
    "7f4000000000-7f4040000000 rw-s 00000000 00:0f 1234 /memfd:passvm-ram (deleted)\n"
    "Size:            1048576 kB\n"
    "KernelPageSize:  1048576 kB\n"
    "Rss:                   0 kB\n"
    "Shared_Hugetlb:  1048576 kB\n"
    "Private_Hugetlb:       0 kB\n";

TEST(PageUsage, CountsOnlyTheMappingAskedFor) {
  PageUsage thp = parse_smaps(kSmaps, 0x7f0000200000, 0x7f0020200000);
  EXPECT_EQ(thp.resident, 512 * layout::MiB);
  EXPECT_EQ(thp.huge, 508 * layout::MiB);
  EXPECT_EQ(thp.page_size, 2 * layout::MiB);
  EXPECT_EQ(thp.describe(), "512 MiB resident, 508 MiB of it in 2 MiB pages, the rest in 4 KiB pages");
}

TEST(PageUsage, HugetlbfsPagesAreResidentAndHuge) {
  PageUsage h = parse_smaps(kSmaps, 0x7f4000000000, 0x7f4040000000);
  EXPECT_EQ(h.resident, 1 * layout::GiB);
  EXPECT_EQ(h.huge, 1 * layout::GiB);
  EXPECT_EQ(h.page_size, 1 * layout::GiB);
  EXPECT_EQ(h.describe(), "1024 MiB resident, all in 1 GiB pages");
}

TEST(PageUsage, NothingResidentOrSmallPages) {
  EXPECT_EQ(parse_smaps(kSmaps, 0x1000, 0x2000).describe(), "none resident yet");
  const std::string small = "10000000-10400000 rw-p 00000000 00:00 0 \nKernelPageSize: 4 kB\nRss: 4096 kB\n"
                            "AnonHugePages: 0 kB\n";
  PageUsage u = parse_smaps(small, 0x10000000, 0x10400000);
  EXPECT_EQ(u.page_size, 4096u);
  EXPECT_EQ(u.describe(), "4 MiB resident, in 4 KiB pages");
}

// High RAM must leave the 64-bit PCI window room in the guest's physical address space.
TEST(GuestMemory, RejectsRamThatLeavesNoRoomForThe64BitWindow) {
  const uint64_t max = layout::max_ram(36);
  EXPECT_EQ(max, 55 * layout::GiB) << "7/8 of 64 GiB, less the 1 GiB the 32-bit hole moves up";
  GuestMemory fits(max, false, 36);  // MAP_NORESERVE: nothing is allocated
  uint64_t end = fits.regions().back().gpa + fits.regions().back().size;
  layout::Window w = layout::mmio64_window(max, 36);
  EXPECT_LE(end, w.start);
  EXPECT_EQ(w.end(), 64 * layout::GiB);
  EXPECT_GE(w.size, 8 * layout::GiB);
  try {
    GuestMemory(max + 2 * layout::MiB, false, 36);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("36-bit physical address space (64 GiB): give -m 55G or less"),
              std::string::npos) << e.what();
  }
  GuestMemory more_bits(max + 2 * layout::MiB, false, 40);
}

TEST(Layout, The64BitWindowIsTheUpperHalfAboveRam) {
  layout::Window w = layout::mmio64_window(512 * layout::MiB, 40);
  EXPECT_EQ(w.start, 512 * layout::GiB);
  EXPECT_EQ(w.size, 512 * layout::GiB);
  // RAM reaching into the upper half: the window starts at the first GiB above it.
  w = layout::mmio64_window(600 * layout::GiB + 100 * layout::MiB, 40);
  EXPECT_EQ(w.start, 602 * layout::GiB);
  EXPECT_EQ(w.end(), 1024 * layout::GiB);
  // An IOMMU of 39 bits under a CPU of 46: the window must stay where devices can reach it.
  w = layout::mmio64_window(512 * layout::MiB, 46, uint64_t{1} << 39);
  EXPECT_EQ(w.start, 256 * layout::GiB);
  EXPECT_EQ(w.end(), 512 * layout::GiB);
  // 64 GiB of RAM with 37 bits used to run into the fixed window: now the window is above it.
  w = layout::mmio64_window(64 * layout::GiB, 37);
  EXPECT_GE(w.start, layout::ram_end(64 * layout::GiB));
}

TEST(Layout, RamThatWouldReachTheHyperTransportHoleStartsAbove1TiB) {
  // 1009 GiB from 4 GiB ends exactly at the hole (0xfd00000000): it stays. One GiB more moves.
  const uint64_t fits_below = layout::kHtHoleStart - layout::GiB;
  EXPECT_EQ(layout::high_ram_start(fits_below, true), 4 * layout::GiB);
  EXPECT_EQ(layout::ram_end(fits_below, true), layout::kHtHoleStart);
  EXPECT_EQ(layout::high_ram_start(fits_below + layout::GiB, true), 1024 * layout::GiB);
  EXPECT_EQ(layout::ram_end(fits_below + layout::GiB, true), 1024 * layout::GiB + 1009 * layout::GiB);
  // Intel hosts have no such hole.
  EXPECT_EQ(layout::high_ram_start(fits_below + layout::GiB, false), 4 * layout::GiB);
  // The most RAM: with 40 bits the window (an eighth of the space, 128 GiB) ends at the hole, not at 1 TiB.
  EXPECT_EQ(layout::max_ram(40, false), 895 * layout::GiB);
  EXPECT_EQ(layout::max_ram(40, true), 883 * layout::GiB);
  EXPECT_GE(layout::mmio64_window(layout::max_ram(40, true), 40, 0, true).size, 128 * layout::GiB);
  // With 41 bits, RAM from 1 TiB up could have only 771 GiB: RAM up to the hole (1011 GiB) is the most.
  EXPECT_EQ(layout::max_ram(41, true), 1011 * layout::GiB);
  EXPECT_EQ(layout::max_ram(41, false), 1791 * layout::GiB);
  // With 43 bits, 7/8 of 8 TiB less the 1021 GiB the hole and the 32-bit hole move RAM up.
  EXPECT_EQ(layout::max_ram(43, true), 6147 * layout::GiB);
}

TEST(GuestMemory, RamAbove4GiBMovesTo1TiBOnlyWhenItWouldReachTheHole) {
  const uint64_t size = 1100 * layout::GiB;  // MAP_NORESERVE: nothing is allocated
  GuestMemory amd(size, false, 48, true);
  ASSERT_EQ(amd.regions().size(), 2u);
  EXPECT_EQ(amd.regions()[1].gpa, 1024 * layout::GiB);
  EXPECT_EQ(amd.regions()[1].size, size - 3 * layout::GiB);
  for (const auto& r : amd.regions())
    EXPECT_TRUE(r.gpa + r.size <= layout::kHtHoleStart || r.gpa >= layout::kHtHoleEnd) << std::hex << r.gpa;
  GuestMemory intel(size, false, 48, false);
  EXPECT_EQ(intel.regions()[1].gpa, 4 * layout::GiB);
  GuestMemory small(8 * layout::GiB, false, 48, true);
  EXPECT_EQ(small.regions()[1].gpa, 4 * layout::GiB);
}

TEST(Layout, The64BitWindowStaysOutOfTheHyperTransportHole) {
  // 40 bits: the upper half is 512 GiB-1 TiB, whose top 12 GiB are the hole.
  layout::Window w = layout::mmio64_window(512 * layout::MiB, 40, 0, true);
  EXPECT_EQ(w.start, 512 * layout::GiB);
  EXPECT_EQ(w.end(), layout::kHtHoleStart);
  // RAM moved above 1 TiB: the window is above it, far from the hole.
  w = layout::mmio64_window(1100 * layout::GiB, 48, 0, true);
  EXPECT_GE(w.start, layout::ram_end(1100 * layout::GiB, true));
  EXPECT_EQ(w.end(), uint64_t{1} << 48);
}

TEST(Layout, UncacheableRangesAreAlignedBlocks) {
  layout::PciWindows pw = layout::pci_windows(512 * layout::MiB, 40);
  auto r = layout::uncacheable_ranges(pw);
  ASSERT_EQ(r.size(), 2u) << "the 32-bit hole, and the upper half in one block";
  EXPECT_EQ(r[0].start, 3 * layout::GiB);
  EXPECT_EQ(r[0].size, 1 * layout::GiB);
  EXPECT_EQ(r[1].start, 512 * layout::GiB);
  EXPECT_EQ(r[1].size, 512 * layout::GiB);
  // 602 GiB to 1 TiB: 2 + 4 + 8 + 128 + 256 GiB blocks, each aligned to its size, in order.
  auto b = layout::aligned_blocks({602 * layout::GiB, 422 * layout::GiB}, 8);
  ASSERT_EQ(b.size(), 5u);
  uint64_t at = 602 * layout::GiB;
  for (auto x : b) {
    EXPECT_EQ(x.start, at);
    EXPECT_EQ(x.start % x.size, 0u);
    at += x.size;
  }
  EXPECT_EQ(at, 1024 * layout::GiB);
  EXPECT_EQ(layout::aligned_blocks({602 * layout::GiB, 422 * layout::GiB}, 3).size(), 3u);
}

// -S with fewer free 2 MiB pages than the guest needs: a clear error now, not a SIGBUS at the first write.
TEST(GuestMemory, HugetlbPoolTooSmallIsAClearError) {
  const uint64_t size = 64 * layout::MiB;
  std::ifstream pool("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages");
  uint64_t free_pages = 0;
  if (pool >> free_pages && free_pages * 2 * layout::MiB >= size)
    GTEST_SKIP() << "this host has 64 MiB of free 2 MiB hugepages";
  try {
    GuestMemory mem(size, true);
    FAIL() << "mapped 64 MiB of hugetlbfs memory the pool does not have";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("are enough hugepages reserved?"), std::string::npos) << e.what();
  }
}

TEST(GuestMemory, RejectsTooSmall) { EXPECT_THROW(GuestMemory(1 * layout::MiB, false), std::runtime_error); }

}  // namespace
}  // namespace passvm
