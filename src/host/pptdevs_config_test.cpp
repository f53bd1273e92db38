#include "host/pptdevs_config.h"

#include <gtest/gtest.h>

#include "testing/fake_sysfs.h"
#include "host/host_error.h"

namespace passvm::host {
namespace {

std::vector<std::string> names(const std::vector<ConfiguredDevice>& list) {
  std::vector<std::string> out;
  for (const auto& d : list) out.push_back(d.address.str() + (d.user.empty() ? "" : " " + d.user));
  return out;
}

std::string error_of(std::string_view text) {
  try {
    parse_pptdevs(text, "c");
  } catch (const HostError& e) {
    return e.what();
  }
  return "no error";
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

TEST(PptdevsConfig, EmptyTextIsEmptyList) { EXPECT_TRUE(parse_pptdevs("\n# nothing\n", "t").empty()); }

TEST(PptdevsConfig, BadAddressNamesFileAndLine) {
  try {
    parse_pptdevs("0000:00:03.0\n\npptdevs=\"1/0/0 1/40/0\"\n", "/etc/passvm/pptdevs.conf");
    FAIL() << "no error";
  } catch (const HostError& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind("/etc/passvm/pptdevs.conf:3: malformed PCI address '1/40/0'", 0), 0u) << msg;
  }
}

TEST(PptdevsConfig, UnknownKeyAndUnterminatedQuoteAreErrors) {
  EXPECT_THROW(parse_pptdevs("devices=0/3/0\n", "t"), HostError);
  EXPECT_THROW(parse_pptdevs("pptdevs=\"1/0/0 2/0/0\n", "t"), HostError);
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
                                             "optionally user=NAME, or is bhyve's pptdevs=\"1/0/0 2/0/0\"");
  EXPECT_EQ(error_of("\nuser=alice"), "c:2: user=alice without a device on its line");
  EXPECT_NE(error_of("03:00.0 user=").find("one user name"), std::string::npos);
  EXPECT_NE(error_of("03:00.0 user=a user=b").find("once per line"), std::string::npos);
  EXPECT_NE(error_of("pptdevs=\"3/0/0 user=alice\"").find("inside a bhyve pptdevs= line"), std::string::npos);
  EXPECT_EQ(error_of("03:00.0 user=alice\n3/0/0"),
            "c:2: 0000:03:00.0 is listed again for root alone, after being given to user alice");
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
