#include "host/pptdevs_config.h"

#include <algorithm>
#include <optional>
#include <sstream>

#include <fmt/format.h>

#include "host/host_error.h"

namespace passvm::host {

namespace {

std::string_view trim(std::string_view s) {
  const char* space = " \t\r";
  auto first = s.find_first_not_of(space);
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(space) - first + 1);
}

bool is_pptdevs_key(std::string_view key) {
  return key == "pptdevs" || key == "pptdevs2" || key == "pptdevs3";
}

std::string owner_text(const std::string& user) { return user.empty() ? "root alone" : "user " + user; }

std::optional<PciId> parse_id(std::string_view text) {
  auto hex4 = [](std::string_view h) { return h.size() == 4 ? parse_number(h, 16, 0xffff) : std::nullopt; };
  auto colon = text.find(':');
  if (colon == std::string_view::npos) return std::nullopt;
  auto vendor = hex4(text.substr(0, colon)), device = hex4(text.substr(colon + 1));
  if (!vendor || !device) return std::nullopt;
  return PciId{static_cast<uint16_t>(*vendor), static_cast<uint16_t>(*device)};
}

}  // namespace

std::string PciId::str() const { return fmt::format("{:04x}:{:04x}", vendor, device); }

namespace {

// One line's devices and options. Throws HostError with the problem (without the line's name).
struct Line {
  std::vector<PciAddress> addresses;
  std::string user;
  std::optional<PciId> id;
};

Line parse_line(std::string_view line) {
  std::string_view values = line;
  bool bhyve = false;
  if (auto eq = line.find('='); eq != std::string_view::npos && is_pptdevs_key(trim(line.substr(0, eq)))) {
    bhyve = true;
    values = trim(line.substr(eq + 1));
    if (!values.empty() && (values.front() == '"' || values.front() == '\'')) {
      if (values.size() < 2 || values.back() != values.front())
        throw HostError(fmt::format("unterminated quote in '{}'; close it as in pptdevs=\"1/0/0 2/0/0\"", line));
      values = values.substr(1, values.size() - 2);
    }
  }
  Line out;
  bool has_user = false;
  std::istringstream words{std::string(values)};
  std::string word;
  while (words >> word) {
    auto eq = word.find('=');
    if (eq == std::string::npos) {
      out.addresses.push_back(PciAddress::parse(word));
      continue;
    }
    std::string key = word.substr(0, eq), value = word.substr(eq + 1);
    if (bhyve) {
      throw HostError(fmt::format("'{}' inside a bhyve pptdevs= line; options go on a line of plain addresses, "
                                  "e.g. `0000:03:00.0 user=alice`",
                                  word));
    }
    if (key == "user") {
      if (value.empty() || has_user) throw HostError("user= takes one user name, once per line (user=alice)");
      out.user = value;
      has_user = true;
    } else if (key == "id") {
      if (out.id || !(out.id = parse_id(value)))
        throw HostError(fmt::format("'{}': id= takes the device's vendor and device ID once, as `lspci -n` "
                                    "prints them (id=144d:a808)",
                                    word));
    } else {
      throw HostError(fmt::format("unknown option '{}'; a line holds addresses and optionally user=NAME and "
                                  "id=VVVV:DDDD, or is bhyve's pptdevs=\"1/0/0 2/0/0\"",
                                  word));
    }
  }
  if (has_user && out.addresses.empty()) throw HostError(fmt::format("user={} without a device on its line", out.user));
  if (out.id && out.addresses.size() != 1)
    throw HostError(fmt::format("id={} names one device, and this line lists {}; give each device a line of its "
                                "own with its own id=",
                                out.id->str(), out.addresses.size()));
  return out;
}

std::string options_text(const ConfiguredDevice& d) {
  return owner_text(d.user) + (d.id ? " with id=" + d.id->str() : "");
}

}  // namespace

PptdevsConfig parse_pptdevs(std::string_view text, std::string_view origin) {
  PptdevsConfig config;
  std::vector<PciAddress> conflicted;  // listed again with other options: left out
  size_t line_no = 0;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    std::string_view raw = text.substr(start, end == std::string_view::npos ? end : end - start);
    start = end == std::string_view::npos ? text.size() + 1 : end + 1;
    ++line_no;
    std::string_view line = trim(raw.substr(0, raw.find('#')));
    if (line.empty()) continue;
    const std::string here = fmt::format("{}:{}", origin, line_no);
    Line parsed;
    try {
      parsed = parse_line(line);
    } catch (const HostError& e) {
      config.errors.push_back(fmt::format("{}: {}", here, e.what()));
      continue;
    }
    for (const auto& address : parsed.addresses) {
      ConfiguredDevice device{address, parsed.user, parsed.id, here};
      auto same = std::find_if(config.devices.begin(), config.devices.end(),
                               [&](const auto& d) { return d.address == address; });
      if (same == config.devices.end()) {
        config.devices.push_back(device);
      } else if (same->user != device.user || same->id != device.id) {
        config.errors.push_back(fmt::format("{}: {} is listed again for {}, after {} on {}: it is left unclaimed "
                                            "until one line says what it gets",
                                            here, address.str(), options_text(device), options_text(*same),
                                            same->origin));
        conflicted.push_back(address);
      }
    }
  }
  std::erase_if(config.devices, [&](const ConfiguredDevice& d) {
    return std::find(conflicted.begin(), conflicted.end(), d.address) != conflicted.end();
  });
  return config;
}

std::optional<std::string> id_mismatch(const ConfiguredDevice& configured, PciId found, std::string_view found_class) {
  if (!configured.id || *configured.id == found) return std::nullopt;
  return fmt::format("{} is {} ({}), not the {} that {} expects there: the buses may have been renumbered (a "
                     "firmware update, a card added). Find the device with `lspci -nn -d {}` and correct its "
                     "address in the config",
                     configured.address.str(), found.str(), found_class, configured.id->str(), configured.origin,
                     configured.id->str());
}

std::optional<PptdevsConfig> load_pptdevs(const Sysroot& sysroot, std::string_view host_path) {
  if (!sysroot.exists(host_path)) return std::nullopt;
  auto text = sysroot.read(host_path);
  if (!text) {
    throw HostError(fmt::format("cannot read {}; check its permissions", sysroot.path(host_path).string()));
  }
  return parse_pptdevs(*text, host_path);
}

}  // namespace passvm::host
