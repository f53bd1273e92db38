#include "pci/root.h"

#include <gtest/gtest.h>

#include <array>
#include <stdexcept>

#include "memory/layout.h"
#include "testing/fake_pci_device.h"

namespace passvm::pci {
namespace {

using testing::FakePciDevice;

// Drives the two BusDevices as the vCPU exit path would, through real Bus objects.
struct Machine {
  int resets = 0;
  PciRoot root{[this] { resets++; }};
  Bus pio{"pio"}, mmio{"mmio"};
  Machine() {
    pio.add(layout::kPciConfigAddrPort, 8, &root.config_io());
    mmio.add(layout::kEcamStart, layout::kEcamSize, &root.ecam());
  }
  void outl(uint16_t port, uint32_t v) { out(port, 4, v); }
  void out(uint16_t port, size_t size, uint32_t v) {
    std::array<uint8_t, 4> b{};
    for (size_t i = 0; i < size; i++) b[i] = static_cast<uint8_t>(v >> (8 * i));
    pio.write(port, std::span<const uint8_t>(b.data(), size));
  }
  uint32_t in(uint16_t port, size_t size) {
    std::array<uint8_t, 4> b{};
    pio.read(port, std::span<uint8_t>(b.data(), size));
    uint32_t v = 0;
    for (size_t i = 0; i < size; i++) v |= uint32_t{b[i]} << (8 * i);
    return v;
  }
  static uint32_t cf8(uint32_t bus, uint32_t slot, uint32_t func, uint32_t reg) {
    return 0x80000000u | bus << 16 | slot << 11 | func << 8 | (reg & 0xfc);
  }
  uint64_t ecam_read(uint32_t slot, uint32_t func, uint32_t reg, size_t size) {
    std::array<uint8_t, 8> b{};
    mmio.read(layout::kEcamStart + (slot << 15 | func << 12 | reg), std::span<uint8_t>(b.data(), size));
    uint64_t v = 0;
    for (size_t i = 0; i < size; i++) v |= uint64_t{b[i]} << (8 * i);
    return v;
  }
  void ecam_write(uint32_t slot, uint32_t func, uint32_t reg, size_t size, uint64_t v) {
    std::array<uint8_t, 8> b{};
    for (size_t i = 0; i < size; i++) b[i] = static_cast<uint8_t>(v >> (8 * i));
    mmio.write(layout::kEcamStart + (slot << 15 | func << 12 | reg), std::span<const uint8_t>(b.data(), size));
  }
};

TEST(PciRoot, AddRejectsTakenAndOutOfRangeSlots) {
  PciRoot root;
  FakePciDevice a, b;
  root.add(3, 0, &a);
  EXPECT_THROW(root.add(3, 0, &b), std::invalid_argument);
  EXPECT_THROW(root.add(32, 0, &b), std::invalid_argument);
  EXPECT_THROW(root.add(-1, 0, &b), std::invalid_argument);
  EXPECT_THROW(root.add(0, 8, &b), std::invalid_argument);
  EXPECT_THROW(root.add(4, 0, nullptr), std::invalid_argument);
  root.add(3, 1, &b);
  EXPECT_EQ(root.device(3, 1), &b);
  EXPECT_EQ(root.device(4, 0), nullptr);
  try {
    root.add(3, 0, &b);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("already taken"), std::string::npos);
  }
}

// Linux scans functions 1-7 of a slot only when function 0's header type has bit 7 set.
TEST(PciRoot, MultiFunctionBitFollowsTheSlot) {
  Machine m;
  FakePciDevice f0, f1, other;
  f0.cfg.set(0x0e, 1, 0x80);  // multi-function on the host, alone in its guest slot: bit must clear
  m.root.add(3, 0, &f0);
  m.root.add(5, 0, &other);
  EXPECT_EQ(m.root.config_read(0, 3, 0, 0x0e, 1), 0x00u);
  m.root.add(3, 1, &f1);
  EXPECT_EQ(m.root.config_read(0, 3, 0, 0x0e, 1), 0x80u);
  EXPECT_EQ(m.root.config_read(0, 3, 1, 0x0e, 1), 0x80u);
  EXPECT_EQ(m.root.config_read(0, 3, 0, 0x0c, 4) >> 16, 0x80u) << "dword read at 0x0c: header type in byte 2";
  EXPECT_EQ(m.root.config_read(0, 5, 0, 0x0e, 1), 0x00u);
  m.outl(layout::kPciConfigAddrPort, Machine::cf8(0, 3, 0, 0x0c));
  EXPECT_EQ((m.in(layout::kPciConfigAddrPort + 4, 4) >> 16) & 0xff, 0x80u);
  EXPECT_EQ(m.root.config_read(0, 3, 0, 0x00, 4), f0.config_read(0, 4)) << "other bytes untouched";
}

TEST(PciRoot, FunctionWithoutFunctionZeroIsRefused) {
  PciRoot root;
  FakePciDevice f2;
  root.add(4, 2, &f2);
  try {
    root.assign_resources();
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("put a device at 4:0"), std::string::npos) << e.what();
  }
}

TEST(PciRoot, Mechanism1ReadsIdsAtEverySize) {
  Machine m;
  FakePciDevice dev(0x8086, 0x10d3);
  m.root.add(5, 2, &dev);
  m.outl(0xcf8, Machine::cf8(0, 5, 2, 0));
  EXPECT_EQ(m.in(0xcf8, 4), Machine::cf8(0, 5, 2, 0));
  EXPECT_EQ(m.in(0xcfc, 4), 0x10d38086u);
  EXPECT_EQ(m.in(0xcfc, 2), 0x8086u);
  EXPECT_EQ(m.in(0xcfe, 2), 0x10d3u);
  EXPECT_EQ(m.in(0xcfd, 1), 0x80u);
  EXPECT_EQ(m.in(0xcff, 1), 0x10u);
  // Unaligned word inside the dword: split into bytes for the device, still the right value.
  EXPECT_EQ(m.in(0xcfd, 2), 0xd380u);
  // Crossing the end of the data window is not a valid access.
  EXPECT_EQ(m.in(0xcfe, 4), 0xffffffffu);
}

TEST(PciRoot, Mechanism1WritesReachTheRegisterAndByteLane) {
  Machine m;
  FakePciDevice dev;
  m.root.add(1, 0, &dev);
  m.outl(0xcf8, Machine::cf8(0, 1, 0, kCfgIntLine));
  m.out(0xcfc, 1, 0x2a);
  EXPECT_EQ(dev.cfg.read(kCfgIntLine, 1), 0x2au);
  m.outl(0xcf8, Machine::cf8(0, 1, 0, kCfgCommand));
  m.out(0xcfc, 2, 0x0507);
  EXPECT_EQ(dev.cfg.read(kCfgCommand, 2), 0x0507u);
  m.out(0xcfd, 1, 0x00);  // high byte of the command register only
  EXPECT_EQ(dev.cfg.read(kCfgCommand, 2), 0x0007u);
  ASSERT_FALSE(dev.writes.empty());
  EXPECT_EQ(dev.writes.back().offset, kCfgCommand + 1);
  EXPECT_EQ(dev.writes.back().size, 1);
}

TEST(PciRoot, Mechanism1DisabledOrAbsentReadsAllOnes) {
  Machine m;
  FakePciDevice dev;
  m.root.add(2, 0, &dev);
  m.outl(0xcf8, Machine::cf8(0, 2, 0, 0) & ~0x80000000u);  // enable bit clear
  EXPECT_EQ(m.in(0xcfc, 4), 0xffffffffu);
  m.out(0xcfc, 2, 0x0006);
  m.outl(0xcf8, Machine::cf8(0, 2, 0, kCfgCommand));
  EXPECT_EQ(m.in(0xcfc, 2), 0u);  // the disabled write never arrived
  m.outl(0xcf8, Machine::cf8(0, 3, 0, 0));  // empty slot
  EXPECT_EQ(m.in(0xcfc, 4), 0xffffffffu);
  m.outl(0xcf8, Machine::cf8(1, 2, 0, 0));  // bus 1 does not exist
  EXPECT_EQ(m.in(0xcfc, 4), 0xffffffffu);
  EXPECT_EQ(m.in(0xcfe, 2), 0xffffu);
  m.outl(0xcf8, Machine::cf8(0, 2, 1, 0));  // function 1 of a populated slot
  EXPECT_EQ(m.in(0xcfc, 4), 0xffffffffu);
}

TEST(PciRoot, ResetControlAtCf9) {
  Machine m;
  m.out(0xcf9, 1, 0x02);  // select hard reset, not yet performed
  EXPECT_EQ(m.resets, 0);
  EXPECT_EQ(m.in(0xcf9, 1), 0x02u);
  m.out(0xcf9, 1, 0x06);
  EXPECT_EQ(m.resets, 1);
  // A dword write to 0xCF8 is an address write, never a reset, even with bit 10 set.
  m.outl(0xcf8, 0x80000600u);
  EXPECT_EQ(m.resets, 1);
}

TEST(PciRoot, EcamReachesExtendedConfigSpace) {
  Machine m;
  FakePciDevice dev(0x1af4, 0x1041);
  m.root.add(7, 3, &dev);
  EXPECT_EQ(m.ecam_read(7, 3, 0, 4), 0x10411af4u);
  EXPECT_EQ(m.ecam_read(7, 3, 2, 2), 0x1041u);
  EXPECT_EQ(m.ecam_read(7, 3, 1, 1), 0x1au);
  EXPECT_EQ(m.ecam_read(7, 3, 0xffc, 4), 0xcafef00du);
  m.ecam_write(7, 3, 0x100, 4, 0x12345678);
  EXPECT_EQ(dev.cfg.read(0x100, 4), 0x12345678u);
  EXPECT_EQ(m.ecam_read(7, 3, 0x102, 2), 0x1234u);
  EXPECT_EQ(m.ecam_read(7, 3, 0x101, 2), 0x3456u);  // unaligned
  // 8-byte access becomes two dwords.
  EXPECT_EQ(m.ecam_read(7, 3, 0, 8), 0x0000000010411af4ull | (uint64_t{dev.cfg.read(4, 4)} << 32));
  EXPECT_EQ(m.ecam_read(8, 0, 0, 4), 0xffffffffu);
  EXPECT_EQ(m.ecam_read(7, 4, 0x100, 4), 0xffffffffu);
  // Mechanism #1 cannot see offsets >= 256, ECAM is the only way there.
  m.outl(0xcf8, Machine::cf8(0, 7, 3, 0));
  EXPECT_EQ(m.in(0xcfc, 4), 0x10411af4u);
}

TEST(PciRoot, ConfigReadSplitsUnalignedIntoDeviceSizedPieces) {
  PciRoot root;
  FakePciDevice dev;
  root.add(0, 0, &dev);
  dev.reads.clear();
  root.config_read(0, 0, 0, 0x3, 4);  // bytes 3,4,5,6 -> 1 + 2 + 1
  ASSERT_EQ(dev.reads.size(), 3u);
  EXPECT_EQ(dev.reads[0].offset, 3u);
  EXPECT_EQ(dev.reads[0].size, 1);
  EXPECT_EQ(dev.reads[1].offset, 4u);
  EXPECT_EQ(dev.reads[1].size, 2);
  EXPECT_EQ(dev.reads[2].offset, 6u);
  EXPECT_EQ(dev.reads[2].size, 1);
  EXPECT_EQ(root.config_read(0, 0, 0, 0xffe, 4), 0xffffffffu);  // runs off the end
}

}  // namespace
}  // namespace passvm::pci
