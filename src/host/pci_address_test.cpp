#include "host/pci_address.h"

#include <gtest/gtest.h>

#include "host/host_error.h"

namespace passvm::host {
namespace {

TEST(PciAddress, ParsesFullSysfsForm) {
  auto a = PciAddress::parse("0000:00:03.0");
  EXPECT_EQ(a.domain, 0);
  EXPECT_EQ(a.bus, 0);
  EXPECT_EQ(a.slot, 3);
  EXPECT_EQ(a.function, 0);
  EXPECT_EQ(PciAddress::parse("10de:af:1f.7").str(), "10de:af:1f.7");
}

TEST(PciAddress, ParsesShortLspciFormAsHex) {
  EXPECT_EQ(PciAddress::parse("1a:00.1").str(), "0000:1a:00.1");
  EXPECT_EQ(PciAddress::parse("0A:1F.3").str(), "0000:0a:1f.3");
}

TEST(PciAddress, ParsesBhyveFormAsDecimal) {
  EXPECT_EQ(PciAddress::parse("3/0/0").str(), "0000:03:00.0");
  EXPECT_EQ(PciAddress::parse("26/31/7").str(), "0000:1a:1f.7");
  EXPECT_EQ(PciAddress::parse("255/0/1").str(), "0000:ff:00.1");
}

TEST(PciAddress, RejectsOutOfRangeFields) {
  EXPECT_THROW(PciAddress::parse("0/32/0"), HostError);  // slot > 31
  EXPECT_THROW(PciAddress::parse("0/0/8"), HostError);   // function > 7
  EXPECT_THROW(PciAddress::parse("256/0/0"), HostError);
  EXPECT_THROW(PciAddress::parse("0000:00:20.0"), HostError);
  EXPECT_THROW(PciAddress::parse("0000:100:00.0"), HostError);
  EXPECT_THROW(PciAddress::parse("10000:00:00.0"), HostError);
}

TEST(PciAddress, RejectsMalformedText) {
  for (const char* bad : {"", "3/0", "3/0/0/0", "a/0/0", "00:03", "0000:00:03", "0000:00:03.", "x0:00.0",
                          "00:03.0 ", "-1/0/0", "0000:00:03.0.1", "00::03.0"}) {
    EXPECT_THROW(PciAddress::parse(bad), HostError) << bad;
  }
}

// The message parse() throws for `text`, or "" when it accepts it.
std::string error_of(std::string_view text) {
  try {
    PciAddress::parse(text);
    return "";
  } catch (const HostError& e) {
    return e.what();
  }
}

TEST(PciAddress, ErrorNamesTheInputAndTheAcceptedForms) {
  std::string msg = error_of("0/40/0");
  EXPECT_NE(msg.find("'0/40/0'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("slot"), std::string::npos) << msg;
  EXPECT_NE(msg.find("DDDD:BB:SS.F"), std::string::npos) << msg;
}

TEST(PciAddress, NumberFieldsAreWholeAndBounded) {
  EXPECT_EQ(parse_number("a808", 16, 0xffff), 0xa808u);
  EXPECT_EQ(parse_number("A808", 16, 0xffff), 0xa808u);
  for (const char* bad : {"", "a80g", "+1", "-1", " 1", "0x10", "10000"}) EXPECT_FALSE(parse_number(bad, 16, 0xffff)) << bad;
  EXPECT_EQ(parse_number("31", 10, 31), 31u);
  EXPECT_FALSE(parse_number("32", 10, 31));
}

TEST(PciAddress, OrdersByDomainBusSlotFunction) {
  EXPECT_LT(PciAddress::parse("0000:00:03.1"), PciAddress::parse("0000:00:04.0"));
  EXPECT_LT(PciAddress::parse("0000:ff:00.0"), PciAddress::parse("0001:00:00.0"));
}

// Linux numbers the domains behind an Intel VMD controller from 10000: such an address is not a typo,
// and the message says what it is.
TEST(PciAddress, VmdDomainIsNamedAsSuch) {
  std::string msg = error_of("10000:01:00.0");
  EXPECT_NE(msg.find("PCI domain 10000 is beyond ffff"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Intel VMD"), std::string::npos) << msg;
  EXPECT_EQ(PciAddress::parse("ffff:01:00.0").domain, 0xffff);
}

}  // namespace
}  // namespace passvm::host
