#include "host/pptdevs_config.h"

#include <gtest/gtest.h>

#include "testing/fake_sysfs.h"
#include "host/host_error.h"

namespace passvm::host {
namespace {

std::vector<std::string> names(const PptdevsConfig& config) {
  std::vector<std::string> out;
  for (const auto& d : config.devices)
    out.push_back(d.address.str() + (d.user.empty() ? "" : " " + d.user) + (d.id ? " id=" + d.id->str() : ""));
  return out;
}

// The one error of a config, which then has no device.
std::string error_of(std::string_view text) {
  auto config = parse_pptdevs(text, "c");
  EXPECT_TRUE(config.devices.empty()) << text;
  return config.errors.size() == 1 ? config.errors[0] : "errors: " + std::to_string(config.errors.size());
}

TEST(PptdevsConfig, OnePerLineWithCommentsAndBlanks) {
  auto list = parse_pptdevs("# passthrough\n0000:00:03.0\n\n  04:00.1   # the audio function\n", "t");
  EXPECT_EQ(names(list), (std::vector<std::string>{"0000:00:03.0", "0000:04:00.1"}));
}

TEST(PptdevsConfig, BhyveLoaderConfSyntax) {
  auto list = parse_pptdevs("pptdevs=\"1/0/0 2/0/0\"\npptdevs2='3/1/2'\npptdevs3=4/0/0\n", "t");
  EXPECT_EQ(names(list), (std::vector<std::string>{"0000:01:00.0", "0000:02:00.0", "0000:03:01.2", "0000:04:00.0"}));
}

TEST(PptdevsConfig, SeveralPerLineAndDuplicatesDropped) {
  auto list = parse_pptdevs("00:03.0 00:04.0\n0/3/0\n", "t");
  EXPECT_EQ(names(list), (std::vector<std::string>{"0000:00:03.0", "0000:00:04.0"}));
}

TEST(PptdevsConfig, EmptyTextIsEmptyList) {
  auto config = parse_pptdevs("\n# nothing\n", "t");
  EXPECT_TRUE(config.devices.empty());
  EXPECT_TRUE(config.errors.empty());
}

// A typo on one line must not hand every listed device back to the host: that line alone is left out.
TEST(PptdevsConfig, ABadLineNamesFileAndLineAndLeavesOnlyItsOwnDevicesOut) {
  auto config = parse_pptdevs("0000:00:03.0\n\npptdevs=\"1/0/0 1/40/0\"\n05:00.0\n", "/etc/passvm/pptdevs.conf");
  EXPECT_EQ(names(config), (std::vector<std::string>{"0000:00:03.0", "0000:05:00.0"}));
  ASSERT_EQ(config.errors.size(), 1u);
  EXPECT_EQ(config.errors[0].rfind("/etc/passvm/pptdevs.conf:3: malformed PCI address '1/40/0'", 0), 0u)
      << config.errors[0];
}

TEST(PptdevsConfig, UnknownKeyAndUnterminatedQuoteAreErrors) {
  EXPECT_NE(error_of("devices=0/3/0\n").find("unknown option 'devices=0/3/0'"), std::string::npos);
  EXPECT_NE(error_of("pptdevs=\"1/0/0 2/0/0\n").find("unterminated quote"), std::string::npos);
}

TEST(PptdevsConfig, IdNamesTheDeviceExpectedAtItsAddress) {
  auto config = parse_pptdevs("0000:03:00.0 id=144D:a808 user=alice\n04:00.0\n", "c");
  EXPECT_EQ(names(config), (std::vector<std::string>{"0000:03:00.0 alice id=144d:a808", "0000:04:00.0"}));
  EXPECT_EQ(config.devices[0].origin, "c:1");
  EXPECT_NE(error_of("03:00.0 04:00.0 id=144d:a808").find("names one device, and this line lists 2"),
            std::string::npos);
  EXPECT_NE(error_of("03:00.0 id=144d").find("id= takes the device's vendor and device ID"), std::string::npos);
  EXPECT_NE(error_of("03:00.0 id=144d:a808 id=144d:a808").find("once"), std::string::npos);
  for (const char* bad : {"x44d:a808", "144d:a808:9", "+44d:a808", "144d:0x08", "144d:", ":a808", "0144d:a808"})
    EXPECT_NE(error_of(std::string("03:00.0 id=") + bad).find("id=144d:a808"), std::string::npos) << bad;
}

TEST(PptdevsConfig, IdMismatchNamesBothDevicesAndTheLine) {
  auto config = parse_pptdevs("\n0000:03:00.0 id=144d:a808\n04:00.0\n", "/etc/passvm/pptdevs.conf");
  ASSERT_EQ(config.devices.size(), 2u);
  EXPECT_EQ(id_mismatch(config.devices[0], {0x144d, 0xa808}, "NVMe controller"), std::nullopt);
  EXPECT_EQ(id_mismatch(config.devices[1], {0x8086, 0x1533}, "Ethernet controller"), std::nullopt) << "no id=";
  auto why = id_mismatch(config.devices[0], {0x8086, 0x1533}, "Ethernet controller");
  ASSERT_TRUE(why.has_value());
  EXPECT_EQ(why->rfind("0000:03:00.0 is 8086:1533 (Ethernet controller), not the 144d:a808 that "
                       "/etc/passvm/pptdevs.conf:2 expects there",
                       0),
            0u)
      << *why;
  EXPECT_NE(why->find("lspci -nn -d 144d:a808"), std::string::npos) << *why;
}

TEST(PptdevsConfig, UserOptionAppliesToItsLineOnly) {
  auto list = parse_pptdevs("0000:03:00.0 user=alice\nuser=bob 04:00.0 04:00.1\n05:00.0\npptdevs=\"6/0/0\"\n", "t");
  EXPECT_EQ(names(list), (std::vector<std::string>{"0000:03:00.0 alice", "0000:04:00.0 bob", "0000:04:00.1 bob",
                                                   "0000:05:00.0", "0000:06:00.0"}));
  EXPECT_EQ(names(parse_pptdevs("03:00.0 user=alice\n3/0/0 user=alice\n", "t")),
            (std::vector<std::string>{"0000:03:00.0 alice"}));
}

TEST(PptdevsConfig, OptionMistakesAreErrorsNamingTheLine) {
  EXPECT_EQ(error_of("03:00.0 owner=alice"), "c:1: unknown option 'owner=alice'; a line holds addresses and "
                                             "optionally user=NAME and id=VVVV:DDDD, or is bhyve's "
                                             "pptdevs=\"1/0/0 2/0/0\"");
  EXPECT_EQ(error_of("\nuser=alice"), "c:2: user=alice without a device on its line");
  EXPECT_NE(error_of("03:00.0 user=").find("one user name"), std::string::npos);
  EXPECT_NE(error_of("03:00.0 user=a user=b").find("once per line"), std::string::npos);
  EXPECT_NE(error_of("pptdevs=\"3/0/0 user=alice\"").find("inside a bhyve pptdevs= line"), std::string::npos);
  EXPECT_EQ(error_of("03:00.0 user=alice\n3/0/0"),
            "c:2: 0000:03:00.0 is listed again for root alone, after user alice on c:1: it is left unclaimed "
            "until one line says what it gets");
  auto config = parse_pptdevs("03:00.0 id=144d:a808\n05:00.0\n3/0/0 id=8086:1533\n", "c");
  EXPECT_EQ(names(config), std::vector<std::string>{"0000:05:00.0"});
  ASSERT_EQ(config.errors.size(), 1u);
  EXPECT_NE(config.errors[0].find("root alone with id=8086:1533, after root alone with id=144d:a808 on c:1"),
            std::string::npos)
      << config.errors[0];
}

TEST(PptdevsConfig, LoadsThroughSysrootAndReportsMissingFile) {
  testing::FakeSysfs fake;
  EXPECT_FALSE(load_pptdevs(fake.sysroot(), kDefaultConfigPath).has_value());
  fake.write("/etc/passvm/pptdevs.conf", "pptdevs=\"0/3/0\"\n");
  auto list = load_pptdevs(fake.sysroot(), kDefaultConfigPath);
  ASSERT_TRUE(list.has_value());
  EXPECT_EQ(names(*list), (std::vector<std::string>{"0000:00:03.0"}));
}

}  // namespace
}  // namespace passvm::host
