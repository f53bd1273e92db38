#include "host/pci_address.h"

#include <charconv>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "host/host_error.h"

namespace passvm::host {

std::optional<unsigned> parse_number(std::string_view field, int base, unsigned max) {
  if (field.empty() || field.size() > 8) return std::nullopt;
  unsigned value = 0;
  auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), value, base);
  if (ec != std::errc() || end != field.data() + field.size() || value > max) return std::nullopt;
  return value;
}

namespace {

std::vector<std::string_view> split(std::string_view text, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (;;) {
    size_t pos = text.find(sep, start);
    parts.push_back(text.substr(start, pos == std::string_view::npos ? pos : pos - start));
    if (pos == std::string_view::npos) return parts;
    start = pos + 1;
  }
}

[[noreturn]] void malformed(std::string_view text, std::string_view why) {
  throw HostError(fmt::format(
      "malformed PCI address '{}': {}; use DDDD:BB:SS.F (e.g. 0000:00:03.0), BB:SS.F or bhyve's "
      "decimal B/S/F (e.g. 0/3/0)",
      text, why));
}

PciAddress from_parts(std::string_view text, std::optional<unsigned> domain, std::optional<unsigned> bus,
                      std::optional<unsigned> slot, std::optional<unsigned> function) {
  if (!domain) malformed(text, "bad domain (hex, at most ffff)");
  if (!bus) malformed(text, "bad bus (at most 255 / ff)");
  if (!slot) malformed(text, "bad slot (at most 31 / 1f)");
  if (!function) malformed(text, "bad function (at most 7)");
  return PciAddress{static_cast<uint16_t>(*domain), static_cast<uint8_t>(*bus), static_cast<uint8_t>(*slot),
                    static_cast<uint8_t>(*function)};
}

}  // namespace

PciAddress PciAddress::parse(std::string_view text) {
  if (text.empty()) malformed(text, "empty");
  if (text.find('/') != std::string_view::npos) {
    auto parts = split(text, '/');
    if (parts.size() != 3) malformed(text, "bhyve form needs exactly three fields B/S/F");
    return from_parts(text, 0u, parse_number(parts[0], 10, 255), parse_number(parts[1], 10, 31), parse_number(parts[2], 10, 7));
  }
  auto dot = text.rfind('.');
  if (dot == std::string_view::npos) malformed(text, "missing '.F' function");
  auto fields = split(text.substr(0, dot), ':');
  std::optional<unsigned> function = parse_number(text.substr(dot + 1), 16, 7);
  if (fields.size() == 2) {
    return from_parts(text, 0u, parse_number(fields[0], 16, 0xff), parse_number(fields[1], 16, 0x1f), function);
  }
  if (fields.size() == 3) {
    if (auto wide = parse_number(fields[0], 16, 0xffffffff); wide && *wide > 0xffff) {
      throw HostError(fmt::format(
          "{}: PCI domain {:x} is beyond ffff, where Linux puts the devices behind an Intel VMD controller; their "
          "DMA and interrupts go through that controller, so they cannot be passed through on their own: turn "
          "VMD off in the firmware (the devices then get ordinary addresses), or pass the VMD controller through",
          text, *wide));
    }
    return from_parts(text, parse_number(fields[0], 16, 0xffff), parse_number(fields[1], 16, 0xff),
                      parse_number(fields[2], 16, 0x1f), function);
  }
  malformed(text, "expected two or three ':'-separated fields before '.F'");
}

std::string PciAddress::str() const {
  return fmt::format("{:04x}:{:02x}:{:02x}.{:x}", domain, bus, slot, function);
}

}  // namespace passvm::host
