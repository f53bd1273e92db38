#include "vmm/console_hint.h"

#include <gtest/gtest.h>

namespace passvm {
namespace {

constexpr ConsoleSetup kCom1{.com1 = true};
constexpr ConsoleSetup kHvc{.virtio_console = true};
constexpr ConsoleSetup kBoth{.com1 = true, .virtio_console = true};

bool has(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

TEST(SilentStopHint, Hvc0ExplainsTheDriverAndOffersCom1) {
  std::string h = silent_stop_hint(kHvc, "console=hvc0 panic=-1 quiet");
  EXPECT_TRUE(has(h, "virtio console driver")) << h;
  EXPECT_TRUE(has(h, "console=ttyS0 and -l com1,stdio")) << h;
  EXPECT_TRUE(has(h, "earlyprintk=ttyS0")) << h;
  // With COM1 already there, only the command line changes.
  h = silent_stop_hint(kBoth, "console=hvc0");
  EXPECT_TRUE(has(h, "virtio console driver")) << h;
  EXPECT_FALSE(has(h, "-l com1,stdio")) << h;
}

TEST(SilentStopHint, Hvc0WithoutAVirtioConsoleAsksForOne) {
  std::string h = silent_stop_hint(kCom1, "console=hvc0");
  EXPECT_TRUE(has(h, "no virtio console")) << h;
  EXPECT_TRUE(has(h, "-l virtio-console,stdio")) << h;
}

TEST(SilentStopHint, Com1WithoutConsoleParameterAsksForIt) {
  EXPECT_TRUE(has(silent_stop_hint(kCom1, "panic=-1 root=/dev/vda"), "add console=ttyS0"));
  EXPECT_TRUE(has(silent_stop_hint(kCom1, ""), "add console=ttyS0"));
  // console=tty0 is the screen, which passvm has none of.
  EXPECT_TRUE(has(silent_stop_hint(kCom1, "console=tty0"), "add console=ttyS0"));
  // What follows "--" is init's, not the kernel's.
  EXPECT_TRUE(has(silent_stop_hint(kCom1, "quiet -- console=ttyS0"), "add console=ttyS0"));
}

TEST(SilentStopHint, Com1ConsoleThatNeverStartedSuggestsEarlyprintk) {
  EXPECT_TRUE(has(silent_stop_hint(kCom1, "console=ttyS0,115200n8"), "earlyprintk=ttyS0"));
  EXPECT_TRUE(has(silent_stop_hint(kCom1, "console=uart8250,io,0x3f8"), "earlyprintk=ttyS0"));
  EXPECT_TRUE(has(silent_stop_hint(kBoth, "console=ttyS0 console=hvc0"), "earlyprintk=ttyS0"));
  // Nothing left to suggest when early output was asked for and still none came.
  EXPECT_EQ(silent_stop_hint(kCom1, "console=ttyS0 earlyprintk=serial"), "");
  EXPECT_EQ(silent_stop_hint(kCom1, "earlycon=uart8250,io,0x3f8 console=ttyS0"), "");
}

TEST(SilentStopHint, NoConsoleAtAllNamesBothHalves) {
  std::string h = silent_stop_hint({}, "console=ttyS0");
  EXPECT_TRUE(has(h, "-l com1,stdio")) << h;
  EXPECT_TRUE(has(h, "console=ttyS0")) << h;
  h = silent_stop_hint(kHvc, "quiet");
  EXPECT_TRUE(has(h, "add console=hvc0")) << h;
  EXPECT_TRUE(has(h, "-l com1,stdio")) << h;
}

}  // namespace
}  // namespace passvm
