#include "passthru/rom.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "memory/layout.h"
#include "testing/fake_vfio.h"
#include "passthru/passthru_device.h"

namespace passvm::passthru {
namespace {

using testing::FakeVfioDevice;
using testing::FakePlatform;
using testing::FakeVfioState;

constexpr uint32_t kRomReg = 0x30;

// A small endpoint with one 4 KiB BAR and, when rom_bytes > 0, a ROM region of that size holding i & 0xff.
FakeVfioState device_with_rom(uint64_t rom_bytes) {
  FakeVfioState s;
  s.set32(0x00, 0x11e81234);
  s.add_region(0, 0x1000);
  if (rom_bytes) {
    s.add_region(VFIO_PCI_ROM_REGION_INDEX, rom_bytes, false, false);
    for (uint64_t i = 0; i < rom_bytes; i++) s.bars[VFIO_PCI_ROM_REGION_INDEX][i] = static_cast<uint8_t>(i);
  }
  return s;
}

struct RomTest : ::testing::Test {
  FakePlatform platform;
  std::unique_ptr<PassthruDevice> open(FakeVfioState& s, std::string rom_file = "") {
    return std::make_unique<PassthruDevice>(std::make_unique<FakeVfioDevice>(s),
                                            std::make_unique<testing::ForwardingPlatform>(platform),
                                            PassthruOptions{.watcher_thread = false, .rom_file = rom_file});
  }
  // The ROM's trap, as a vCPU would reach it, or nullptr.
  BusDevice* rom_trap(uint64_t at) {
    auto it = platform.traps.find({false, at});
    return it == platform.traps.end() ? nullptr : it->second.second;
  }
  // What an OS does to read a ROM: place it, turn memory decoding on, enable it.
  void enable_rom(PassthruDevice& dev, uint64_t at) {
    dev.assign_bar(pci::kRomBarIndex, at);
    dev.config_write(0x04, 2, 0x2);
    dev.config_write(kRomReg, 4, static_cast<uint32_t>(at) | 1);
  }
  // The read-only memory slot at `at`: what the guest reads without exits.
  const uint8_t* rom_memory(uint64_t at, uint64_t size) {
    for (auto& [h, slot] : platform.slots)
      if (slot.gpa == at && slot.size == size && slot.readonly) return static_cast<const uint8_t*>(slot.hva);
    return nullptr;
  }
};

TEST_F(RomTest, DeviceRomIsSizedPlacedAndReadWhileEnabled) {
  FakeVfioState s = device_with_rom(0x6000);  // not a power of two: the register sizes to 32 KiB
  auto dev = open(s);
  auto reqs = dev->bar_requests();
  ASSERT_EQ(reqs.back().index, pci::kRomBarIndex);
  EXPECT_EQ(reqs.back().size, 0x8000u);
  EXPECT_EQ(reqs.back().kind, pci::BarKind::Mmio32);
  // Sizing, as an OS does it.
  dev->config_write(kRomReg, 4, 0xfffff800);
  EXPECT_EQ(dev->config_read(kRomReg, 4), 0xffff8000u);
  const uint64_t at = layout::kMmio32Start + 0x100000;
  dev->assign_bar(pci::kRomBarIndex, at);
  EXPECT_EQ(dev->config_read(kRomReg, 4), at) << "placed, enable off";
  dev->config_write(0x04, 2, 0x2);
  EXPECT_EQ(rom_trap(at), nullptr) << "not visible until enabled";
  dev->config_write(kRomReg, 4, static_cast<uint32_t>(at) | 1);
  // Read-only memory holding the device's ROM, so reading it costs no exits; writes go to the trap.
  const uint8_t* mem = rom_memory(at, 0x8000);
  ASSERT_NE(mem, nullptr);
  EXPECT_EQ(mem[0x1234], 0x34);
  EXPECT_EQ(mem[0x5fff], 0xff);
  EXPECT_EQ(mem[0x6000], 0xff) << "beyond the device's ROM reads as all ones";
  BusDevice* t = rom_trap(at);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(platform.traps.at({false, at}).first, 0x8000u);
  uint8_t b[8];
  t->read(0x1234, b);
  EXPECT_EQ(b[0], 0x34);
  EXPECT_EQ(b[7], 0x3b);
  uint8_t w[4] = {1, 2, 3, 4};
  t->write(0x10, w);
  t->read(0x10, b);
  EXPECT_EQ(b[0], 0x10) << "read-only";
  EXPECT_TRUE(std::none_of(s.events.begin(), s.events.end(),
                                               [](const std::string& e) { return e.rfind("bar6", 0) == 0; }))
      << "a write to the ROM reached the device";
  dev->config_write(0x04, 2, 0x0);
  EXPECT_EQ(rom_trap(at), nullptr) << "memory decoding off hides it";
  EXPECT_EQ(rom_memory(at, 0x8000), nullptr);
  dev->config_write(0x04, 2, 0x2);
  EXPECT_NE(rom_trap(at), nullptr);
  // Moved by the guest: it follows.
  const uint64_t moved = at + 0x10000;
  dev->config_write(kRomReg, 4, static_cast<uint32_t>(moved) | 1);
  EXPECT_EQ(rom_memory(at, 0x8000), nullptr);
  EXPECT_NE(rom_memory(moved, 0x8000), nullptr);
  dev.reset();
  EXPECT_EQ(rom_trap(moved), nullptr) << "teardown removes the trap";
  EXPECT_TRUE(platform.slots.empty()) << "and the memory slot";
}

TEST_F(RomTest, WithoutReadOnlyMemoryTheTrapServesReads) {
  FakeVfioState s = device_with_rom(0x2000);
  platform.refuse_readonly = true;
  auto dev = open(s);
  const uint64_t at = layout::kMmio32Start + 0x100000;
  enable_rom(*dev, at);
  EXPECT_EQ(rom_memory(at, 0x2000), nullptr);
  BusDevice* t = rom_trap(at);
  ASSERT_NE(t, nullptr);
  uint8_t b[4];
  t->read(0x1ffe, b);
  EXPECT_EQ(b[0], 0xfe);
  EXPECT_EQ(b[1], 0xff);
  EXPECT_EQ(b[2], 0xff) << "past the ROM's end";
}

// KVM refusing to remove the ROM's memory when the guest moves or hides it must not stop the machine:
// the write is taken, the ROM stays where it was, and it follows at the next write KVM carries out.
TEST_F(RomTest, AMoveKvmRefusesLeavesTheRomWhereItWas) {
  FakeVfioState s = device_with_rom(0x2000);
  auto dev = open(s);
  const uint64_t at = layout::kMmio32Start + 0x100000, moved = at + 0x10000;
  enable_rom(*dev, at);
  ASSERT_NE(rom_memory(at, 0x2000), nullptr);
  platform.refuse_unmap = true;
  ::testing::internal::CaptureStderr();
  EXPECT_NO_THROW(dev->config_write(kRomReg, 4, static_cast<uint32_t>(moved) | 1));
  EXPECT_NO_THROW(dev->config_write(0x04, 2, 0x0));
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("cannot move or hide the ROM"), std::string::npos) << err;
  EXPECT_NE(rom_memory(at, 0x2000), nullptr);
  EXPECT_NE(rom_trap(at), nullptr);
  EXPECT_EQ(rom_memory(moved, 0x2000), nullptr);
  platform.refuse_unmap = false;
  dev->config_write(0x04, 2, 0x2);
  EXPECT_EQ(rom_memory(at, 0x2000), nullptr);
  EXPECT_EQ(rom_trap(at), nullptr);
  EXPECT_NE(rom_memory(moved, 0x2000), nullptr) << "where the register says";
}

TEST_F(RomTest, NoRomReadsZeroAndAsksForNothing) {
  FakeVfioState s = device_with_rom(0);
  auto dev = open(s);
  for (auto& r : dev->bar_requests()) EXPECT_NE(r.index, pci::kRomBarIndex);
  dev->config_write(kRomReg, 4, 0xfffff801);
  EXPECT_EQ(dev->config_read(kRomReg, 4), 0u);
}

TEST_F(RomTest, RomFileReplacesTheDevicesRom) {
  char path[] = "/tmp/passvm-rom-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  std::string image(3000, '\x5a');
  image[0] = '\x55';
  image[1] = '\xaa';
  ASSERT_EQ(write(fd, image.data(), image.size()), static_cast<ssize_t>(image.size()));
  close(fd);
  FakeVfioState s = device_with_rom(0x8000);
  auto dev = open(s, path);
  EXPECT_EQ(dev->bar_requests().back().size, 0x1000u) << "sized from the file";
  const uint64_t at = layout::kMmio32Start + 0x200000;
  enable_rom(*dev, at);
  BusDevice* t = rom_trap(at);
  ASSERT_NE(t, nullptr);
  uint8_t b[4];
  t->read(0, b);
  EXPECT_EQ(b[0], 0x55);
  EXPECT_EQ(b[1], 0xaa);
  EXPECT_EQ(b[2], 0x5a);
  t->read(2998, b);
  EXPECT_EQ(b[1], 0x5a);
  EXPECT_EQ(b[2], 0xff);
  unlink(path);
  EXPECT_THROW(open(s, path), std::runtime_error) << "a missing file is an error naming it";
}

}  // namespace
}  // namespace passvm::passthru
