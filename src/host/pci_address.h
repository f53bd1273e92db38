// host: PCI addresses as users type them and as sysfs names them.
//
// Users come from bhyve ("3/0/0": decimal bus/slot/function, domain 0) or from
// lspci ("00:03.0", "0000:00:03.0", hex). Sysfs always uses the full
// "DDDD:BB:SS.F" form, so everything is normalised to that before use.
#pragma once

#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace passvm::host {

struct PciAddress {
  uint16_t domain = 0;
  uint8_t bus = 0;
  uint8_t slot = 0;  // 0..31
  uint8_t function = 0;  // 0..7

  // Accepts B/S/F (decimal), DDDD:BB:SS.F and BB:SS.F (hex); throws HostError otherwise.
  static PciAddress parse(std::string_view text);
  // "0000:00:03.0", the sysfs name.
  std::string str() const;

  auto operator<=>(const PciAddress&) const = default;
};

// A whole field of such text (or of an ID such as 8086:10d3) as an unsigned number in `base`, or nullopt
// when it is empty, holds anything but digits of that base, or exceeds `max`.
std::optional<unsigned> parse_number(std::string_view field, int base, unsigned max);

}  // namespace passvm::host
