#include "devices/i8042.h"

#include <gtest/gtest.h>

#include <vector>

namespace passvm::devices {
namespace {

struct Kbc {
  int resets = 0;
  std::vector<bool> kbd_irq;
  I8042 dev{[this] { resets++; }, [this](bool l) { kbd_irq.push_back(l); }};
  uint8_t status() { return in(4); }
  uint8_t in(uint64_t port) {
    uint8_t b = 0;
    dev.read(port, {&b, 1});
    return b;
  }
  void out(uint64_t port, uint8_t v) { dev.write(port, {&v, 1}); }
};

// A guest that writes the data port again and again (rep outsb hands a page per exit) without reading
// does not grow passvm's memory: the output buffer keeps a few bytes, as the chip keeps one.
TEST(I8042, OutputBufferIsBounded) {
  Kbc k;
  for (int i = 0; i < 100000; i++) k.out(0, 0xf2);
  int n = 0;
  while (k.in(4) & 0x01) {
    k.in(0);
    ASSERT_LT(++n, 64);
  }
  EXPECT_GE(n, 1);
}

TEST(I8042, ResetCommand) {
  Kbc k;
  k.out(4, 0xfe);
  EXPECT_EQ(k.resets, 1);
}

// The other ways a system resets through the controller: a pulse command whose bit 0 is clear, and the
// output port written with the reset line (bit 0) low. Pulses of other lines, and an output port
// written with bit 0 high (A20 on, as boot loaders do), are no reset.
TEST(I8042, PulseCommandsAndOutputPortResetByBitZero) {
  Kbc k;
  k.out(4, 0xff);
  k.out(4, 0xfd);
  k.out(4, 0xd1);
  k.out(0, 0xdf);  // A20 on, reset line high
  EXPECT_EQ(k.resets, 0);
  k.out(4, 0xf0);
  EXPECT_EQ(k.resets, 1);
  k.out(4, 0xd1);
  k.out(0, 0xde);
  EXPECT_EQ(k.resets, 2);
  EXPECT_EQ(k.status() & 0x01, 0) << "the output port write answers nothing";
}

TEST(I8042, StatusIsSaneAndCommandsAnswer) {
  Kbc k;
  EXPECT_EQ(k.status() & 0x01, 0) << "nothing to read at start";
  EXPECT_EQ(k.status() & 0x04, 0x04) << "system flag: self test passed";
  k.out(4, 0xaa);
  EXPECT_EQ(k.status() & 0x01, 0x01);
  EXPECT_EQ(k.in(0), 0x55);
  EXPECT_EQ(k.status() & 0x01, 0);
  k.out(4, 0x20);
  uint8_t ctr = k.in(0);
  k.out(4, 0x60);
  k.out(0, static_cast<uint8_t>(ctr & ~0x01));  // keyboard interrupt off
  k.out(4, 0x20);
  EXPECT_EQ(k.in(0), ctr & ~0x01);
  k.out(4, 0xa8);  // aux enable clears the AUXDIS bit
  k.out(4, 0x20);
  EXPECT_EQ(k.in(0) & 0x20, 0);
  k.out(4, 0xd3);  // aux loopback: the byte comes back flagged as aux data
  k.out(0, 0x5a);
  EXPECT_EQ(k.status() & 0x21, 0x21);
  EXPECT_EQ(k.in(0), 0x5a);
  EXPECT_EQ(k.resets, 0);
}

TEST(I8042, KeyboardIrqFollowsOutputBuffer) {
  Kbc k;
  k.out(0, 0xf2);  // a keyboard command: no keyboard, refused
  EXPECT_EQ(k.kbd_irq, std::vector<bool>{true});
  EXPECT_EQ(k.in(0), 0xfe);
  EXPECT_EQ(k.kbd_irq, (std::vector<bool>{true, false}));
}

TEST(I8042, PostPortKeepsLastByte) {
  PostPort p;
  uint8_t v = 0x42, r = 0;
  p.write(0, {&v, 1});
  p.read(0, {&r, 1});
  EXPECT_EQ(r, 0x42);
}

}  // namespace
}  // namespace passvm::devices
