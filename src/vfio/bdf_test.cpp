#include "vfio/bdf.h"

#include <gtest/gtest.h>

#include "vfio/device.h"

namespace passvm::vfio {
namespace {

TEST(Bdf, ParsesFullSysfsForm) {
  Bdf b = Bdf::parse("0001:0a:1f.7");
  EXPECT_EQ(b.domain, 1u);
  EXPECT_EQ(b.bus, 10u);
  EXPECT_EQ(b.slot, 31u);
  EXPECT_EQ(b.function, 7u);
  EXPECT_EQ(b.str(), "0001:0a:1f.7");
}

TEST(Bdf, ParsesShortLspciFormAsDomainZero) {
  Bdf b = Bdf::parse("00:03.0");
  EXPECT_EQ(b, (Bdf{0, 0, 3, 0}));
  EXPECT_EQ(b.str(), "0000:00:03.0");
}

TEST(Bdf, ParsesBhyveDecimalForm) {
  EXPECT_EQ(Bdf::parse("0/3/0").str(), "0000:00:03.0");
  // Decimal: bus 10 is 0x0a, slot 17 is 0x11.
  EXPECT_EQ(Bdf::parse("10/17/2").str(), "0000:0a:11.2");
}

TEST(Bdf, HexAndDecimalAreNotConfused) {
  EXPECT_EQ(Bdf::parse("00:10.0").slot, 16u);
  EXPECT_EQ(Bdf::parse("0/10/0").slot, 10u);
}

void expect_error(const char* text, const char* part) {
  try {
    Bdf::parse(text);
    ADD_FAILURE() << text << " was accepted";
  } catch (const VfioError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(part), std::string::npos) << msg;
    EXPECT_NE(msg.find("B/S/F"), std::string::npos) << "the error should show the accepted forms: " << msg;
  }
}

TEST(Bdf, RejectsBadInput) {
  expect_error("", "empty");
  expect_error("0/32/0", "slot 32 is out of range");
  expect_error("0/3/8", "function 8");
  expect_error("256/0/0", "bus 256");
  expect_error("0/3", "three numbers");
  expect_error("0/3/0/1", "three numbers");
  expect_error("00:03", "no '.'");
  expect_error("00:20.0", "slot 20");
  expect_error("zz:03.0", "bus 'zz' is not a hex number");
  expect_error("0/a/0", "not a decimal number");
  expect_error("1:2:3:4.0", "expected BB:SS.F");
  expect_error("10000:00:03.0", "domain");
  expect_error("00:03.", "function is empty");
  expect_error("-1/3/0", "bus");
}

}  // namespace
}  // namespace passvm::vfio
