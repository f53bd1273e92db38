#include "acpi/tables.h"

#include <fmt/format.h>

#include <cstring>
#include <stdexcept>

#include "acpi/table_writer.h"
#include "devices/acpi_pm.h"
#include "devices/cmos_rtc.h"
#include "memory/guest_memory.h"
#include "memory/layout.h"

namespace passvm::acpi {

void put_le(std::vector<uint8_t>& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; i++) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void fix_checksum(uint8_t* table, size_t len, size_t at) {
  table[at] = 0;
  uint8_t sum = 0;
  for (size_t i = 0; i < len; i++) sum = static_cast<uint8_t>(sum + table[i]);
  table[at] = static_cast<uint8_t>(-sum);
}

std::vector<uint8_t> make_table(std::string_view signature, uint8_t revision, const std::vector<uint8_t>& body) {
  std::vector<uint8_t> t;
  t.insert(t.end(), signature.begin(), signature.end());
  put_le(t, kHeaderSize + body.size(), 4);
  t.push_back(revision);
  t.push_back(0);  // checksum, below
  t.insert(t.end(), kOemId, kOemId + 6);
  t.insert(t.end(), kOemTableId, kOemTableId + 8);
  put_le(t, 1, 4);                                   // OEM revision
  t.insert(t.end(), {'P', 'S', 'V', 'M'});           // creator ID
  put_le(t, 1, 4);                                   // creator revision
  t.insert(t.end(), body.begin(), body.end());
  fix_checksum(t.data(), t.size(), 9);
  return t;
}

namespace {

constexpr size_t kFadtSize = 276;
constexpr uint8_t kSpaceIo = 1;
constexpr uint8_t kAccessByte = 1, kAccessWord = 2;

// Writes little-endian values at absolute table offsets of a zero-filled body.
class Fields {
 public:
  explicit Fields(size_t table_size) : body_(table_size - kHeaderSize, 0) {}
  void set(size_t offset, int bytes, uint64_t v) {
    for (int i = 0; i < bytes; i++) body_.at(offset - kHeaderSize + static_cast<size_t>(i)) = static_cast<uint8_t>(v >> (8 * i));
  }
  // Generic Address Structure.
  void gas(size_t offset, uint8_t space, uint8_t bits, uint8_t access, uint64_t address) {
    set(offset, 1, space);
    set(offset + 1, 1, bits);
    set(offset + 2, 1, 0);
    set(offset + 3, 1, access);
    set(offset + 4, 8, address);
  }
  const std::vector<uint8_t>& body() const { return body_; }

 private:
  std::vector<uint8_t> body_;
};

std::vector<uint8_t> build_fadt(uint64_t facs, uint64_t dsdt) {
  Fields f(kFadtSize);
  f.set(36, 4, facs);  // FIRMWARE_CTRL (X_FIRMWARE_CTRL stays zero, as the spec wants when this is used)
  f.set(40, 4, dsdt);
  f.set(45, 1, 0);     // preferred PM profile: unspecified
  f.set(46, 2, layout::kAcpiSciIrq);
  f.set(48, 4, 0);     // no SMI_CMD: always in ACPI mode
  f.set(56, 4, layout::kAcpiPm1aEvt);
  f.set(64, 4, layout::kAcpiPm1aCnt);
  f.set(80, 4, layout::kAcpiGpe0);
  f.set(92, 1, devices::AcpiPm::kGpe0Length);  // GPE0_BLK_LEN
  f.set(88, 1, 4);     // PM1_EVT_LEN
  f.set(89, 1, 2);     // PM1_CNT_LEN
  f.set(96, 2, 101);   // P_LVL2_LAT > 100: no C2
  f.set(98, 2, 1001);  // P_LVL3_LAT > 1000: no C3
  f.set(108, 1, devices::kCmosCenturyRegister);
  // IAPC_BOOT_ARCH: legacy devices (COM1, RTC); VGA not present; MSI allowed, CMOS RTC present. No 8042:
  // there is no keyboard, and without the flag Linux skips probing the controller, a few hundred port
  // accesses at boot (it is still there for the PC's 0xFE reset).
  f.set(109, 2, 0x0001 | 0x0004);
  // Flags: WBINVD, PROC_C1, SLP_BUTTON (no sleep button), RESET_REG_SUP. The power button is fixed hardware.
  f.set(112, 4, (1u << 0) | (1u << 2) | (1u << 5) | (1u << 10));
  f.gas(116, kSpaceIo, 8, kAccessByte, layout::kResetPort);  // RESET_REG
  f.set(128, 1, 0x06);                                       // RESET_VALUE: hard reset
  f.set(131, 1, 0);                                          // FADT minor version
  f.set(140, 8, dsdt);                                       // X_DSDT
  f.gas(148, kSpaceIo, 32, kAccessWord, layout::kAcpiPm1aEvt);
  f.gas(172, kSpaceIo, 16, kAccessWord, layout::kAcpiPm1aCnt);
  f.gas(220, kSpaceIo, devices::AcpiPm::kGpe0Length * 8, kAccessByte, layout::kAcpiGpe0);  // X_GPE0_BLK
  f.set(268, 8, 0x4d56535341505f5full);  // hypervisor vendor identity "__PASSVM" as stored bytes
  return make_table("FACP", 6, f.body());
}

std::vector<uint8_t> build_madt(uint32_t vcpus) {
  std::vector<uint8_t> body;
  put_le(body, layout::kLapicAddr, 4);
  put_le(body, 1, 4);  // PCAT_COMPAT: there are 8259 PICs too
  for (uint32_t i = 0; i < vcpus; i++) {
    body.insert(body.end(), {0, 8, static_cast<uint8_t>(i), static_cast<uint8_t>(i)});  // type, length, UID, APIC ID
    put_le(body, 1, 4);  // enabled
  }
  body.insert(body.end(), {1, 12, 0, 0});  // I/O APIC, ID 0 (KVM's reset value)
  put_le(body, layout::kIoapicAddr, 4);
  put_le(body, 0, 4);  // GSI base
  // SCI: ISA IRQ 9 -> GSI 9, level-triggered, active high. IRQ0 is not overridden: KVM's PIT drives GSI 0.
  body.insert(body.end(), {2, 10, 0, static_cast<uint8_t>(layout::kAcpiSciIrq)});
  put_le(body, layout::kAcpiSciIrq, 4);
  put_le(body, 0x0001 | 0x000c, 2);  // polarity active high, trigger level
  // LINT1 of every processor is the NMI input.
  body.insert(body.end(), {4, 6, 0xff, 0, 0, 1});
  return make_table("APIC", 5, body);
}

std::vector<uint8_t> build_mcfg() {
  std::vector<uint8_t> body(8, 0);
  put_le(body, layout::kEcamStart, 8);
  put_le(body, 0, 2);  // segment
  body.push_back(0);   // first bus
  body.push_back(static_cast<uint8_t>(layout::kEcamBuses - 1));
  put_le(body, 0, 4);
  return make_table("MCFG", 1, body);
}

std::vector<uint8_t> build_facs() {
  std::vector<uint8_t> t{'F', 'A', 'C', 'S'};
  put_le(t, 64, 4);
  t.resize(32, 0);  // hardware signature, waking vectors, global lock, flags
  t.push_back(2);   // version
  t.resize(64, 0);
  return t;
}

std::vector<uint8_t> build_rsdp(uint64_t xsdt) {
  std::vector<uint8_t> t{'R', 'S', 'D', ' ', 'P', 'T', 'R', ' ', 0};
  t.insert(t.end(), kOemId, kOemId + 6);
  t.push_back(2);     // revision: ACPI 2.0+ (XSDT)
  put_le(t, 0, 4);    // no RSDT
  put_le(t, 36, 4);
  put_le(t, xsdt, 8);
  t.insert(t.end(), {0, 0, 0, 0});
  fix_checksum(t.data(), 20, 8);
  fix_checksum(t.data(), 36, 32);
  return t;
}

class Placer {
 public:
  Placer(std::span<uint8_t> window, uint64_t gpa) : window_(window), gpa_(gpa) {}
  uint64_t place(const std::vector<uint8_t>& table, size_t align) {
    size_t at = (next_ + align - 1) / align * align;
    if (at > window_.size() || table.size() > window_.size() - at)
      throw std::length_error(fmt::format("ACPI tables need more than the {} bytes at {:#x}", window_.size(), gpa_));
    std::memcpy(window_.data() + at, table.data(), table.size());
    next_ = at + table.size();
    return gpa_ + at;
  }

 private:
  std::span<uint8_t> window_;
  uint64_t gpa_;
  size_t next_ = 0;
};

}  // namespace

uint64_t build_tables(const AcpiConfig& config, std::span<uint8_t> window, uint64_t window_gpa) {
  if (config.vcpus == 0 || config.vcpus > kMaxVcpus)
    throw std::invalid_argument(
        fmt::format("{} vCPUs: passvm's ACPI tables describe 1 to {} vCPUs", config.vcpus, kMaxVcpus));
  if (window_gpa % 16 != 0 || window_gpa + window.size() > (uint64_t{1} << 32))
    throw std::invalid_argument(fmt::format("ACPI window at {:#x} must be 16-byte aligned and below 4 GiB", window_gpa));
  std::fill(window.begin(), window.end(), uint8_t{0});

  Placer p(window, window_gpa);
  constexpr size_t kRsdpSize = 36;
  p.place(std::vector<uint8_t>(kRsdpSize, 0), 16);  // reserve: written last, once the XSDT address is known
  uint64_t facs = p.place(build_facs(), 64);
  uint64_t dsdt = p.place(build_dsdt(config), 16);
  uint64_t fadt = p.place(build_fadt(facs, dsdt), 16);
  uint64_t madt = p.place(build_madt(config.vcpus), 16);
  uint64_t mcfg = p.place(build_mcfg(), 16);
  std::vector<uint8_t> entries;
  for (uint64_t t : {fadt, madt, mcfg}) put_le(entries, t, 8);
  uint64_t xsdt = p.place(make_table("XSDT", 1, entries), 16);
  std::vector<uint8_t> rsdp = build_rsdp(xsdt);
  std::memcpy(window.data(), rsdp.data(), rsdp.size());
  return window_gpa;
}

uint64_t build_tables(const AcpiConfig& config, GuestMemory& memory) {
  uint8_t* host = memory.host_address(layout::kAcpiStart, layout::kAcpiSize);
  if (!host)
    throw std::runtime_error(fmt::format("guest RAM does not cover the ACPI area {:#x}-{:#x}", layout::kAcpiStart,
                                         layout::kAcpiStart + layout::kAcpiSize - 1));
  return build_tables(config, std::span<uint8_t>(host, layout::kAcpiSize), layout::kAcpiStart);
}

}  // namespace passvm::acpi
