#include "cli/options.h"

#include <gtest/gtest.h>

#include <stdexcept>

namespace passvm::cli {
namespace {

ParseResult parse(std::vector<std::string> args) { return parse_command_line(args); }

TEST(ParseSize, SuffixesAndBareMiB) {
  EXPECT_EQ(parse_size("512M"), 512ull << 20);
  EXPECT_EQ(parse_size("2G"), 2ull << 30);
  EXPECT_EQ(parse_size("2g"), 2ull << 30);
  EXPECT_EQ(parse_size("65536K"), 64ull << 20);
  EXPECT_EQ(parse_size("1T"), 1ull << 40);
  EXPECT_EQ(parse_size("512"), 512ull << 20);
  EXPECT_EQ(parse_size("512MiB"), 512ull << 20);
  EXPECT_EQ(parse_size("4GB"), 4ull << 30);
  EXPECT_FALSE(parse_size("").has_value());
  EXPECT_FALSE(parse_size("M").has_value());
  EXPECT_FALSE(parse_size("12Q").has_value());
  EXPECT_FALSE(parse_size("-1G").has_value());
  EXPECT_FALSE(parse_size("99999999999999999999G").has_value());
  EXPECT_FALSE(parse_size("17179869184T").has_value());  // overflows 64 bits
}

TEST(ParseSlot, BhyveForms) {
  auto s = parse_slot("3,passthru,0000:03:00.0");
  EXPECT_EQ(s.slot, 3u);
  EXPECT_EQ(s.func, 0u);
  EXPECT_EQ(s.emulation, "passthru");
  EXPECT_EQ(s.config, "0000:03:00.0");
  s = parse_slot("4:2,passthru,3/0/0");
  EXPECT_EQ(s.slot, 4u);
  EXPECT_EQ(s.func, 2u);
  EXPECT_EQ(s.config, "3/0/0");
  s = parse_slot("0:5:1,passthru,1/0/0");
  EXPECT_EQ(s.slot, 5u);
  EXPECT_EQ(s.func, 1u);
  EXPECT_EQ(parse_slot("0,hostbridge").emulation, "hostbridge");
  s = parse_slot("4,passthru,0000:03:00.0,rom=/srv/roms/gpu.rom");
  EXPECT_EQ(s.config, "0000:03:00.0");
  EXPECT_EQ(s.rom, "/srv/roms/gpu.rom");
  EXPECT_TRUE(s.p2p) << "peer-to-peer DMA is on by default";
  s = parse_slot("4,passthru,0000:03:00.0,p2p=off,rom=/r");
  EXPECT_FALSE(s.p2p);
  EXPECT_EQ(s.rom, "/r");
}

TEST(ParseSlot, ErrorsNameTheProblem) {
  auto message = [](const std::string& text) {
    try {
      parse_slot(text);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("3").find("SLOT[:FUNC],EMULATION"), std::string::npos);
  EXPECT_NE(message("32,passthru,1/0/0").find("0 to 31"), std::string::npos);
  EXPECT_NE(message("3:8,passthru,1/0/0").find("0 to 7"), std::string::npos);
  EXPECT_NE(message("x,hostbridge").find("slot 'x'"), std::string::npos);
  EXPECT_NE(message("1:3:0,passthru,1/0/0").find("single PCI bus"), std::string::npos);
  EXPECT_NE(message("3,virtio-net").find("unknown emulation 'virtio-net'"), std::string::npos);
  EXPECT_NE(message("3,passthru").find("needs the host device"), std::string::npos);
  EXPECT_NE(message("0,hostbridge,foo").find("takes no configuration"), std::string::npos);
  EXPECT_NE(message("4,passthru,3/0/0,bios=x").find("unknown passthru option 'bios=x'"), std::string::npos);
  EXPECT_NE(message("4,passthru,3/0/0,rom=").find("unknown passthru option 'rom='"), std::string::npos);
  EXPECT_NE(message("4,passthru,3/0/0,p2p=maybe").find("p2p=on|off"), std::string::npos);
  EXPECT_NE(message("4,passthru,,rom=a").find("needs the host device"), std::string::npos);
}

TEST(CommandLine, FullBhyveStyleLine) {
  auto r = parse({"-c", "2", "-m", "512M", "-s", "0,hostbridge", "-s", "3,passthru,0000:00:03.0", "-s",
                  "4,passthru,0/4/0", "-l", "com1,stdio", "--kernel", "/boot/vmlinuz", "--initrd", "/boot/initrd",
                  "--append", "console=ttyS0 quiet", "guest1"});
  ASSERT_TRUE(r.config.has_value()) << r.message;
  const auto& c = *r.config;
  EXPECT_EQ(c.cpus, 2u);
  EXPECT_EQ(c.memory, 512ull << 20);
  ASSERT_EQ(c.slots.size(), 3u);
  EXPECT_EQ(c.slots[2].config, "0/4/0");
  EXPECT_EQ(c.com1, "stdio");
  EXPECT_EQ(c.kernel, "/boot/vmlinuz");
  EXPECT_EQ(c.initrd, "/boot/initrd");
  EXPECT_EQ(c.cmdline, "console=ttyS0 quiet");
  EXPECT_EQ(c.name, "guest1");
}

TEST(CommandLine, VirtioConsoleBesideCom1) {
  auto r = parse({"-l", "com1,stdio", "-l", "virtio-console,stdio", "--kernel", "k", "--append", "console=hvc0"});
  ASSERT_TRUE(r.config.has_value()) << r.message;
  EXPECT_EQ(r.config->com1, "stdio");
  EXPECT_EQ(r.config->virtio_console, "stdio");
}

TEST(CommandLine, DefaultsAndLongOptions) {
  auto r = parse({"--kernel", "k", "--cpus", "4", "--memory", "1G"});
  ASSERT_TRUE(r.config.has_value()) << r.message;
  EXPECT_EQ(r.config->cpus, 4u);
  EXPECT_EQ(r.config->memory, 1ull << 30);
  EXPECT_TRUE(r.config->com1.empty());
  EXPECT_TRUE(r.config->virtio_console.empty());
  EXPECT_FALSE(r.config->hugepages);
  EXPECT_TRUE(r.config->unpack_on_host);
  EXPECT_FALSE(r.config->verbose);
  EXPECT_TRUE(r.config->pvpanic);
  auto g = parse({"--kernel", "k", "--guest-decompress", "-v", "--no-pvpanic"});
  ASSERT_TRUE(g.config.has_value()) << g.message;
  EXPECT_FALSE(g.config->unpack_on_host);
  EXPECT_TRUE(g.config->verbose);
  EXPECT_FALSE(g.config->pvpanic);
}

TEST(CommandLine, AnApiSocketAloneRunsWithoutAVm) {
  auto a = parse({"--api-socket", "/run/pv.sock"});
  EXPECT_TRUE(a.run) << a.message;
  EXPECT_FALSE(a.config.has_value());
  EXPECT_EQ(a.api_socket, "/run/pv.sock");
  auto b = parse({"--api-socket", "/run/pv.sock", "--kernel", "k", "-c", "2"});
  EXPECT_TRUE(b.run);
  ASSERT_TRUE(b.config.has_value());
  EXPECT_EQ(b.config->cpus, 2u);
  auto c = parse({"--kernel", "k"});
  EXPECT_TRUE(c.run);
  EXPECT_TRUE(c.api_socket.empty());
  EXPECT_FALSE(parse({"--help"}).run);
}

// -v, --stats, --guest-decompress and the name say how passvm runs any VM: with no VM on the command line
// they are kept for those vm.create brings, not dropped.
TEST(CommandLine, OptionsForEveryVmAreKeptForTheApisVms) {
  auto a = parse({"--api-socket", "/run/pv.sock", "-v", "--stats", "--guest-decompress", "web1"});
  ASSERT_TRUE(a.run) << a.message;
  EXPECT_TRUE(a.api_defaults.verbose);
  EXPECT_TRUE(a.api_defaults.stats);
  EXPECT_FALSE(a.api_defaults.unpack_on_host);
  EXPECT_EQ(a.api_defaults.name, "web1");
  auto b = parse({"--api-socket", "/run/pv.sock"});
  EXPECT_FALSE(b.api_defaults.verbose);
  EXPECT_TRUE(b.api_defaults.unpack_on_host);
}

TEST(CommandLine, SeccompIsOnByDefaultAndNamesItsChoices) {
  auto d = parse({"--kernel", "k"});
  EXPECT_EQ(d.seccomp, confine::SeccompMode::Kill);
  EXPECT_TRUE(d.user.empty());
  auto l = parse({"--kernel", "k", "--seccomp", "log", "--user", "alice"});
  EXPECT_EQ(l.seccomp, confine::SeccompMode::Log);
  EXPECT_EQ(l.user, "alice");
  auto bad = parse({"--kernel", "k", "--seccomp", "strict"});
  EXPECT_FALSE(bad.run);
  EXPECT_EQ(bad.exit_status, 1);
  EXPECT_NE(bad.message.find("give on, log or off"), std::string::npos) << bad.message;
}

TEST(CommandLine, HelpAndVersionExitZero) {
  auto h = parse({"--help"});
  EXPECT_FALSE(h.config.has_value());
  EXPECT_EQ(h.exit_status, 0);
  EXPECT_NE(h.message.find("--kernel"), std::string::npos);
  EXPECT_NE(h.message.find("passthru"), std::string::npos);
  auto v = parse({"--version"});
  EXPECT_EQ(v.exit_status, 0);
  EXPECT_NE(v.message.find("passvm"), std::string::npos);
}

TEST(CommandLine, BadInputIsOneClearErrorAndNonZero) {
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  } cases[] = {
      {{"-m", "512M"}, "--kernel"},
      {{"--kernel", "k", "-m", "lots"}, "-m lots"},
      {{"--api-socket", "/tmp/s", "-s", "3,passthru,1/0/0"}, "--slot describes a VM, but no --kernel"},
      {{"--api-socket", "/tmp/s", "-m", "1G"}, "--memory describes a VM"},
      {{"--kernel", "k", "-m", "1M"}, "at least 16M"},
      {{"--kernel", "k", "-c", "0"}, "cpus"},
      {{"--kernel", "k", "-c", "two"}, "cpus"},
      {{"--kernel", "k", "--frobnicate"}, "frobnicate"},
      {{"--kernel", "k", "-s", "3,passthru,1/0/0", "-s", "3,passthru,2/0/0"}, "already used"},
      {{"--kernel", "k", "-s", "0,passthru,1/0/0"}, "host bridge"},
      {{"--kernel", "k", "-s", "2,hostbridge"}, "slot 0"},
      {{"--kernel", "k", "-l", "com2,stdio"}, "com1,stdio"},
      {{"--kernel", "k", "-l", "virtio-console,file"}, "virtio-console,stdio (its hvc0)"},
      {{"--kernel", "k", "-S", "-m", "3M"}, "-m 3M"},
      {{"--kernel", "k", "-S", "-m", "17M"}, "multiple of 2M"},
  };
  for (const auto& c : cases) {
    auto r = parse(c.args);
    EXPECT_FALSE(r.config.has_value()) << c.expect;
    EXPECT_EQ(r.exit_status, 1) << c.expect;
    EXPECT_NE(r.message.find(c.expect), std::string::npos) << "got: " << r.message;
    EXPECT_EQ(r.message.find('\n'), std::string::npos) << "multi-line error: " << r.message;
  }
}

}  // namespace
}  // namespace passvm::cli
