#include "acpi/tables.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>

#include "devices/acpi_pm.h"
#include "memory/layout.h"

namespace passvm::acpi {
namespace {

// Reads the guest's view: tables by guest-physical address inside the window.
struct Image {
  std::vector<uint8_t> mem = std::vector<uint8_t>(layout::kAcpiSize, 0xcc);
  uint64_t rsdp = 0;
  explicit Image(uint32_t vcpus) { rsdp = build_tables(AcpiConfig{vcpus}, mem, layout::kAcpiStart); }
  const uint8_t* at(uint64_t gpa) const {
    EXPECT_GE(gpa, layout::kAcpiStart);
    EXPECT_LT(gpa, layout::kAcpiStart + layout::kAcpiSize);
    return mem.data() + (gpa - layout::kAcpiStart);
  }
  static uint64_t le(const uint8_t* p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= uint64_t{p[i]} << (8 * i);
    return v;
  }
  static uint8_t sum(const uint8_t* p, size_t n) {
    uint8_t s = 0;
    for (size_t i = 0; i < n; i++) s = static_cast<uint8_t>(s + p[i]);
    return s;
  }
  static std::string sig(const uint8_t* p) { return std::string(reinterpret_cast<const char*>(p), 4); }
  uint64_t xsdt() const { return le(at(rsdp) + 24, 8); }
  // Signature -> address, from the XSDT.
  std::map<std::string, uint64_t> tables() const {
    const uint8_t* x = at(xsdt());
    std::map<std::string, uint64_t> out;
    for (uint64_t off = 36; off < le(x + 4, 4); off += 8) {
      uint64_t a = le(x + off, 8);
      out[sig(at(a))] = a;
    }
    return out;
  }
};

TEST(AcpiTables, RsdpIsV2AlignedWithBothChecksums) {
  Image img(2);
  EXPECT_EQ(img.rsdp, layout::kAcpiStart);
  EXPECT_EQ(img.rsdp % 16, 0u);
  const uint8_t* r = img.at(img.rsdp);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(r), 8), "RSD PTR ");
  EXPECT_EQ(r[15], 2);
  EXPECT_EQ(Image::le(r + 20, 4), 36u);
  EXPECT_EQ(Image::sum(r, 20), 0);
  EXPECT_EQ(Image::sum(r, 36), 0);
}

TEST(AcpiTables, EveryTableChecksumsAndXsdtPointsAtThem) {
  Image img(4);
  const uint8_t* x = img.at(img.xsdt());
  EXPECT_EQ(Image::sig(x), "XSDT");
  EXPECT_EQ(Image::sum(x, Image::le(x + 4, 4)), 0);
  EXPECT_EQ(Image::le(x + 4, 4), 36u + 3 * 8);
  auto t = img.tables();
  ASSERT_EQ(t.size(), 3u);
  for (const char* s : {"FACP", "APIC", "MCFG"}) {
    ASSERT_TRUE(t.count(s)) << s;
    const uint8_t* p = img.at(t[s]);
    EXPECT_EQ(Image::sum(p, Image::le(p + 4, 4)), 0) << s;
    EXPECT_EQ(t[s] % 8, 0u) << s;
  }
}

TEST(AcpiTables, FadtDescribesPmResetAndDsdt) {
  Image img(1);
  const uint8_t* f = img.at(img.tables()["FACP"]);
  EXPECT_EQ(Image::le(f + 4, 4), 276u);
  EXPECT_EQ(f[8], 6);
  EXPECT_EQ(Image::le(f + 46, 2), layout::kAcpiSciIrq);
  EXPECT_EQ(Image::le(f + 56, 4), layout::kAcpiPm1aEvt);
  EXPECT_EQ(Image::le(f + 64, 4), layout::kAcpiPm1aCnt);
  EXPECT_EQ(f[88], 4);
  EXPECT_EQ(f[89], 2);
  uint64_t flags = Image::le(f + 112, 4);
  EXPECT_TRUE(flags & (1u << 10)) << "RESET_REG_SUP";
  EXPECT_FALSE(flags & (1u << 20)) << "not hardware-reduced";
  EXPECT_EQ(f[116], 1) << "reset register in I/O space";
  EXPECT_EQ(f[117], 8);
  EXPECT_EQ(Image::le(f + 120, 8), 0xcf9u);
  EXPECT_EQ(f[128], 0x06);
  uint64_t boot_arch = Image::le(f + 109, 2);
  EXPECT_FALSE(boot_arch & 0x2) << "no 8042 announced: Linux must not spend boot time probing it";
  EXPECT_TRUE(boot_arch & 0x4) << "VGA not present";
  EXPECT_FALSE(boot_arch & 0x8) << "must not claim MSI is unsupported";
  EXPECT_FALSE(boot_arch & 0x20) << "CMOS RTC present";
  EXPECT_EQ(Image::le(f + 148 + 4, 8), layout::kAcpiPm1aEvt);
  EXPECT_EQ(Image::le(f + 172 + 4, 8), layout::kAcpiPm1aCnt);

  uint64_t dsdt = Image::le(f + 140, 8);
  ASSERT_NE(dsdt, 0u);
  const uint8_t* d = img.at(dsdt);
  EXPECT_EQ(Image::sig(d), "DSDT");
  EXPECT_EQ(Image::sum(d, Image::le(d + 4, 4)), 0);
  EXPECT_EQ(d[8], 2) << "revision 2: 64-bit integers";

  uint64_t facs = Image::le(f + 36, 4);
  ASSERT_NE(facs, 0u);
  EXPECT_EQ(facs % 64, 0u);
  EXPECT_EQ(Image::sig(img.at(facs)), "FACS");
}

TEST(AcpiTables, MadtHasOneLapicPerVcpuIoapicAndSciOverride) {
  for (uint32_t n : {1u, 3u, 8u, 255u}) {
    Image img(n);
    const uint8_t* m = img.at(img.tables()["APIC"]);
    uint64_t len = Image::le(m + 4, 4);
    EXPECT_EQ(Image::le(m + 36, 4), layout::kLapicAddr);
    EXPECT_EQ(Image::le(m + 40, 4) & 1, 1u) << "PCAT_COMPAT";
    uint32_t lapics = 0, ioapics = 0, overrides = 0;
    for (uint64_t off = 44; off < len; off += m[off + 1]) {
      ASSERT_GT(m[off + 1], 0);
      switch (m[off]) {
        case 0:
          EXPECT_EQ(m[off + 3], lapics) << "APIC IDs 0..n-1";
          EXPECT_EQ(Image::le(m + off + 4, 4) & 1, 1u) << "enabled";
          lapics++;
          break;
        case 1:
          ioapics++;
          EXPECT_EQ(Image::le(m + off + 4, 4), layout::kIoapicAddr);
          EXPECT_EQ(Image::le(m + off + 8, 4), 0u);
          break;
        case 2:
          overrides++;
          EXPECT_EQ(m[off + 3], 9) << "only the SCI is overridden; IRQ0 stays on GSI 0";
          EXPECT_EQ(Image::le(m + off + 4, 4), 9u);
          EXPECT_EQ(Image::le(m + off + 8, 2), 0x0du) << "level, active high";
          break;
      }
    }
    EXPECT_EQ(lapics, n);
    EXPECT_EQ(ioapics, 1u);
    EXPECT_EQ(overrides, 1u);
  }
}

TEST(AcpiTables, McfgPointsAtEcam) {
  Image img(1);
  const uint8_t* m = img.at(img.tables()["MCFG"]);
  EXPECT_EQ(Image::le(m + 4, 4), 36u + 8 + 16);
  EXPECT_EQ(Image::le(m + 44, 8), layout::kEcamStart);
  EXPECT_EQ(Image::le(m + 52, 2), 0u);
  EXPECT_EQ(m[54], 0);
  EXPECT_EQ(m[55], layout::kEcamBuses - 1);
}

TEST(AcpiTables, BadInputIsRejected) {
  std::vector<uint8_t> mem(layout::kAcpiSize);
  EXPECT_THROW(build_tables(AcpiConfig{0}, mem, layout::kAcpiStart), std::invalid_argument);
  EXPECT_THROW(build_tables(AcpiConfig{256}, mem, layout::kAcpiStart), std::invalid_argument);
  std::vector<uint8_t> tiny(256);
  EXPECT_THROW(build_tables(AcpiConfig{1}, tiny, layout::kAcpiStart), std::length_error);
}

TEST(AcpiTables, DsdtCarriesTheSleepTypeAndRouting) {
  auto d = build_dsdt();
  std::string s(d.begin(), d.end());
  EXPECT_NE(s.find("_S5_"), std::string::npos);
  EXPECT_NE(s.find("PCI0"), std::string::npos);
  EXPECT_NE(s.find("_PRT"), std::string::npos);
  // Slot 31 INTD: Package(4){0x001FFFFF, 3, 0, GSI}: length 12, 4 elements, DWord, byte 3, Zero, byte GSI.
  uint8_t gsi = static_cast<uint8_t>(layout::pci_intx_gsi(31, 3));
  std::string entry{'\x12', '\x0c', '\x04', '\x0c', '\xff', '\xff', '\x1f', '\x00', '\x0a', '\x03', '\x00', '\x0a',
                    static_cast<char>(gsi)};
  EXPECT_NE(s.find(entry), std::string::npos);
}

// ---- Real validation with ACPICA's disassembler, when installed.

std::string find_iasl() {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    auto candidate = std::filesystem::path(dir) / "iasl";
    if (access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return {};
}

struct Disassembly {
  int status;
  std::string log, dsl;
};

Disassembly disassemble(const std::vector<uint8_t>& table, const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("passvm-acpi-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  auto aml = dir / (name + ".dat");
  std::ofstream(aml, std::ios::binary).write(reinterpret_cast<const char*>(table.data()),
                                            static_cast<std::streamsize>(table.size()));
  std::string cmd = "cd '" + dir.string() + "' && '" + find_iasl() + "' -d '" + aml.filename().string() + "' 2>&1";
  Disassembly out{};
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.log.append(buf, n);
  out.status = pclose(p);
  std::ifstream dsl(dir / (name + ".dsl"));
  std::stringstream ss;
  ss << dsl.rdbuf();
  out.dsl = ss.str();
  std::filesystem::remove_all(dir);
  return out;
}

TEST(AcpiTablesIasl, DsdtDecompilesCleanly) {
  if (find_iasl().empty()) GTEST_SKIP() << "iasl not installed (apt-get install acpica-tools)";
  Disassembly d = disassemble(build_dsdt(), "dsdt");
  ASSERT_EQ(d.status, 0) << d.log;
  EXPECT_EQ(d.log.find("Error"), std::string::npos) << d.log;
  for (const char* want : {"_S5", "PCI0", "_PRT", "PNP0A08", "PNP0A03", "PNP0501", "PNP0C02", "WordBusNumber",
                           "QWordMemory", "DWordMemory", "IRQNoFlags", "Memory32Fixed", "Method (_STA"})
    EXPECT_NE(d.dsl.find(want), std::string::npos) << want << "\n" << d.dsl;
  // The RTC at its ports and its IRQ.
  const size_t rtc = d.dsl.find("Device (RTC)");
  ASSERT_NE(rtc, std::string::npos) << d.dsl;
  const std::string body = d.dsl.substr(rtc, d.dsl.find("Device", rtc + 6) - rtc);
  for (const char* want : {"PNP0B00", "0x0070,             // Range Minimum", "0x0070,             // Range Maximum",
                           "0x02,               // Length", "IRQNoFlags ()", "{8}"})
    EXPECT_NE(body.find(want), std::string::npos) << want << "\n" << body;
}

TEST(AcpiTablesIasl, HotplugSlotsDecompileToWhatAcpiphpNeeds) {
  if (find_iasl().empty()) GTEST_SKIP() << "iasl not installed (apt-get install acpica-tools)";
  Disassembly d = disassemble(build_dsdt({.hotplug_slots = (1u << 3) | (1u << 31)}), "dsdt");
  ASSERT_EQ(d.status, 0) << d.log;
  EXPECT_EQ(d.log.find("Error"), std::string::npos) << d.log;
  for (const char* want : {"OperationRegion (PCST, SystemIO, 0xAE00, 0x0C)",
                           "Field (PCST, DWordAcc, NoLock, WriteAsZeros)", "PCIU,   32", "B0EJ,   32",
                           "Device (S03)", "Name (_ADR, 0x00030000)", "Name (_SUN, 0x03)", "Device (S1F)",
                           "Name (_ADR, 0x001F0000)", "PCEJ (0x1F)", "Notify (S03, One)", "Notify (S03, 0x03)",
                           "Notify (S1F, 0x03)", "Method (_E01, 0, NotSerialized)", "\\_SB.PCI0.PCNT ()",
                           "B0EJ = (One << Arg0)", "If ((Local0 & 0x08))", "If ((Local1 & 0x80000000))"})
    EXPECT_NE(d.dsl.find(want), std::string::npos) << want << "\n" << d.dsl;
  EXPECT_EQ(d.dsl.find("Device (S04)"), std::string::npos) << "slot 4 is not hotpluggable";
  // Without hotplug slots, none of it.
  Disassembly plain = disassemble(build_dsdt(), "dsdt");
  EXPECT_EQ(plain.dsl.find("PCNT"), std::string::npos);
  EXPECT_EQ(plain.dsl.find("_GPE"), std::string::npos);
}

// Linux assigns a hot-added device's BARs itself, from the root bridge's windows: an I/O window beyond
// where passvm maps I/O BARs would get a BAR placed there and left unmapped. The hot-plug registers are
// reserved as a motherboard resource.
TEST(AcpiTablesIasl, IoWindowsAreWhereIoBarsAreMappedAndHotplugPortsReserved) {
  if (find_iasl().empty()) GTEST_SKIP() << "iasl not installed (apt-get install acpica-tools)";
  Disassembly d = disassemble(build_dsdt({.hotplug_slots = 1u << 3}), "dsdt");
  ASSERT_EQ(d.status, 0) << d.log;
  std::vector<std::pair<std::string, std::string>> windows;  // WordIO's minimum and maximum
  for (size_t at = d.dsl.find("WordIO"); at != std::string::npos; at = d.dsl.find("WordIO", at + 1)) {
    auto field = [&](const char* label) {
      size_t end = d.dsl.find(label, at);
      size_t start = d.dsl.rfind("0x", end);
      return d.dsl.substr(start, d.dsl.find(',', start) - start);
    };
    windows.emplace_back(field("// Range Minimum"), field("// Range Maximum"));
  }
  const std::vector<std::pair<std::string, std::string>> want{{"0x0000", "0x0CF7"}, {"0xC000", "0xFFFF"}};
  EXPECT_EQ(windows, want) << d.dsl;
  const layout::PciWindows w;
  EXPECT_EQ(w.io.start, 0xc000u);
  EXPECT_EQ(w.io.end(), 0x10000u);
  const size_t pdrc = d.dsl.find("Device (PDRC)");
  ASSERT_NE(pdrc, std::string::npos) << d.dsl;
  const std::string body = d.dsl.substr(pdrc, d.dsl.find("Device", pdrc + 6) - pdrc);
  for (const char* want_io : {"0xAE00,             // Range Minimum", "0x0C,               // Length"})
    EXPECT_NE(body.find(want_io), std::string::npos) << want_io << "\n" << body;
  Disassembly plain = disassemble(build_dsdt(), "dsdt");
  EXPECT_EQ(plain.dsl.find("0xAE00"), std::string::npos) << "no hot-plug, no reservation";
}

TEST(AcpiTablesIasl, VirtioConsoleIsAVirtioMmioDeviceWithItsRegistersAndIrq) {
  if (find_iasl().empty()) GTEST_SKIP() << "iasl not installed (apt-get install acpica-tools)";
  Disassembly d = disassemble(build_dsdt({.virtio_console = true}), "dsdt");
  ASSERT_EQ(d.status, 0) << d.log;
  EXPECT_EQ(d.log.find("Error"), std::string::npos) << d.log;
  const size_t at = d.dsl.find("Device (VCON)");
  ASSERT_NE(at, std::string::npos) << d.dsl;
  const std::string body = d.dsl.substr(at);
  for (const char* want : {"Name (_HID, \"LNRO0005\")", "Memory32Fixed (ReadWrite,", "0xFEB00000,         // Address Base",
                           "0x00000200,         // Address Length", "IRQNoFlags ()", "{5}"})
    EXPECT_NE(body.find(want), std::string::npos) << want << "\n" << body;
  EXPECT_EQ(disassemble(build_dsdt(), "dsdt").dsl.find("LNRO0005"), std::string::npos);
}

TEST(AcpiTablesIasl, PvpanicIsQemu0001AtItsPort) {
  if (find_iasl().empty()) GTEST_SKIP() << "iasl not installed (apt-get install acpica-tools)";
  Disassembly d = disassemble(build_dsdt({.pvpanic = true}), "dsdt");
  ASSERT_EQ(d.status, 0) << d.log;
  EXPECT_EQ(d.log.find("Error"), std::string::npos) << d.log;
  const size_t at = d.dsl.find("Device (PEVT)");
  ASSERT_NE(at, std::string::npos) << d.dsl;
  const std::string body = d.dsl.substr(at);
  for (const char* want : {"Name (_HID, \"QEMU0001\")", "0x0505,             // Range Minimum",
                           "0x0505,             // Range Maximum", "0x01,               // Length",
                           "Name (_STA, 0x0F)"})
    EXPECT_NE(body.find(want), std::string::npos) << want << "\n" << body;
  EXPECT_EQ(disassemble(build_dsdt(), "dsdt").dsl.find("QEMU0001"), std::string::npos);
}

TEST(AcpiTablesIasl, EveryOptionalDeviceAtOnceDecompilesCleanly) {
  if (find_iasl().empty()) GTEST_SKIP() << "iasl not installed (apt-get install acpica-tools)";
  // The DSDT passvm's command line builds by default has the pvpanic device; the API's has hotplug slots.
  Disassembly d = disassemble(build_dsdt({.hotplug_slots = ~1u, .virtio_console = true, .pvpanic = true}), "dsdt");
  ASSERT_EQ(d.status, 0) << d.log;
  EXPECT_EQ(d.log.find("Error"), std::string::npos) << d.log;
  for (const char* want : {"Device (PEVT)", "Device (VCON)", "Device (S1F)", "Device (COM1)", "Device (RTC)"})
    EXPECT_NE(d.dsl.find(want), std::string::npos) << want;
}

TEST(AcpiTablesIasl, DataTablesDecompileCleanly) {
  if (find_iasl().empty()) GTEST_SKIP() << "iasl not installed (apt-get install acpica-tools)";
  Image img(2);
  for (auto& [sig, addr] : img.tables()) {
    const uint8_t* p = img.at(addr);
    std::vector<uint8_t> table(p, p + Image::le(p + 4, 4));
    Disassembly d = disassemble(table, sig);
    ASSERT_EQ(d.status, 0) << sig << "\n" << d.log;
    EXPECT_EQ(d.dsl.find("**** "), std::string::npos) << sig << ": iasl flagged a field\n" << d.dsl;
    EXPECT_NE(d.dsl.find("Signature : \"" + sig + "\""), std::string::npos) << d.dsl;
  }
}

}  // namespace
}  // namespace passvm::acpi
