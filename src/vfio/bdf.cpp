#include "vfio/bdf.h"

#include <charconv>
#include <vector>

#include <fmt/format.h>

#include "vfio/device.h"

namespace passvm::vfio {
namespace {

[[noreturn]] void bad(std::string_view text, std::string_view why) {
  throw VfioError(fmt::format("invalid PCI address '{}': {}; write DDDD:BB:SS.F or BB:SS.F (hex, as lspci prints) "
                              "or B/S/F (decimal, as bhyve)",
                              text, why));
}

uint32_t number(std::string_view text, std::string_view field, int base, uint32_t max, std::string_view name) {
  if (field.empty()) bad(text, fmt::format("{} is empty", name));
  uint32_t v = 0;
  auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), v, base);
  if (ec != std::errc() || end != field.data() + field.size())
    bad(text, fmt::format("{} '{}' is not a {} number", name, field, base == 16 ? "hex" : "decimal"));
  if (v > max) bad(text, fmt::format("{} {} is out of range (max {})", name, field, max));
  return v;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    size_t p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string_view::npos ? std::string_view::npos : p - start));
    if (p == std::string_view::npos) return out;
    start = p + 1;
  }
}

}  // namespace

Bdf Bdf::parse(std::string_view text) {
  if (text.empty()) bad(text, "it is empty");
  Bdf b;
  if (text.find('/') != std::string_view::npos) {
    auto parts = split(text, '/');
    if (parts.size() != 3) bad(text, "B/S/F needs exactly three numbers");
    b.bus = number(text, parts[0], 10, 255, "bus");
    b.slot = number(text, parts[1], 10, 31, "slot");
    b.function = number(text, parts[2], 10, 7, "function");
    return b;
  }
  size_t dot = text.rfind('.');
  if (dot == std::string_view::npos) bad(text, "no '.' before the function");
  b.function = number(text, text.substr(dot + 1), 16, 7, "function");
  auto parts = split(text.substr(0, dot), ':');
  if (parts.size() == 3) {
    b.domain = number(text, parts[0], 16, 0xffff, "domain");
    parts.erase(parts.begin());
  } else if (parts.size() != 2) {
    bad(text, "expected BB:SS.F or DDDD:BB:SS.F");
  }
  b.bus = number(text, parts[0], 16, 255, "bus");
  b.slot = number(text, parts[1], 16, 31, "slot");
  return b;
}

std::string Bdf::str() const { return fmt::format("{:04x}:{:02x}:{:02x}.{:x}", domain, bus, slot, function); }

}  // namespace passvm::vfio
