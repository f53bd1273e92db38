#include "vfio/bdf.h"

#include <gtest/gtest.h>

#include "vfio/device.h"

namespace passvm::vfio {
namespace {

TEST(Bdf, ParsesFullSysfsForm) {
  Bdf b = parse_bdf("0001:0a:1f.7");
  EXPECT_EQ(b.domain, 1u);
  EXPECT_EQ(b.bus, 10u);
  EXPECT_EQ(b.slot, 31u);
  EXPECT_EQ(b.function, 7u);
  EXPECT_EQ(b.str(), "0001:0a:1f.7");
}

TEST(Bdf, ParsesShortLspciFormAsDomainZero) {
  Bdf b = parse_bdf("00:03.0");
  EXPECT_EQ(b, (Bdf{0, 0, 3, 0}));
  EXPECT_EQ(b.str(), "0000:00:03.0");
}

TEST(Bdf, ParsesBhyveDecimalForm) {
  EXPECT_EQ(parse_bdf("0/3/0").str(), "0000:00:03.0");
  // Decimal: bus 10 is 0x0a, slot 17 is 0x11.
  EXPECT_EQ(parse_bdf("10/17/2").str(), "0000:0a:11.2");
}

TEST(Bdf, HexAndDecimalAreNotConfused) {
  EXPECT_EQ(parse_bdf("00:10.0").slot, 16u);
  EXPECT_EQ(parse_bdf("0/10/0").slot, 10u);
}

void expect_error(const char* text, const char* part) {
  try {
    parse_bdf(text);
    ADD_FAILURE() << text << " was accepted";
  } catch (const VfioError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(part), std::string::npos) << msg;
    EXPECT_NE(msg.find("B/S/F"), std::string::npos) << "the error should show the accepted forms: " << msg;
  }
}

// The wording of each error is host tooling's (host/pci_address_test.cpp); here: they arrive as VfioErrors
// naming the text and the accepted forms.
TEST(Bdf, RejectsBadInput) {
  for (const char* text : {"", "0/32/0", "0/3/8", "256/0/0", "0/3", "0/3/0/1", "00:03", "00:20.0", "zz:03.0", "0/a/0",
                           "1:2:3:4.0", "00:03."})
    expect_error(text, text);
  // Not a typo: a device behind an Intel VMD controller, which the message says.
  try {
    parse_bdf("10000:00:03.0");
    ADD_FAILURE() << "a VMD domain was accepted";
  } catch (const VfioError& e) {
    EXPECT_NE(std::string(e.what()).find("Intel VMD"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace passvm::vfio
