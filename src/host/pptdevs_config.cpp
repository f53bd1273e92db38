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

}  // namespace

std::vector<ConfiguredDevice> parse_pptdevs(std::string_view text, std::string_view origin) {
  std::vector<ConfiguredDevice> devices;
  size_t line_no = 0;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    std::string_view line = text.substr(start, end == std::string_view::npos ? end : end - start);
    start = end == std::string_view::npos ? text.size() + 1 : end + 1;
    ++line_no;
    line = trim(line.substr(0, line.find('#')));
    if (line.empty()) continue;
    auto error = [&](const std::string& what) { return HostError(fmt::format("{}:{}: {}", origin, line_no, what)); };

    std::string_view values = line;
    bool bhyve = false;
    if (auto eq = line.find('='); eq != std::string_view::npos && is_pptdevs_key(trim(line.substr(0, eq)))) {
      bhyve = true;
      values = trim(line.substr(eq + 1));
      if (!values.empty() && (values.front() == '"' || values.front() == '\'')) {
        if (values.size() < 2 || values.back() != values.front()) {
          throw error(fmt::format("unterminated quote in '{}'; close it as in pptdevs=\"1/0/0 2/0/0\"", line));
        }
        values = values.substr(1, values.size() - 2);
      }
    }

    std::vector<PciAddress> addresses;
    std::optional<std::string> user;
    std::istringstream words{std::string(values)};
    std::string word;
    while (words >> word) {
      auto eq = word.find('=');
      if (eq == std::string::npos) {
        try {
          addresses.push_back(PciAddress::parse(word));
        } catch (const HostError& e) {
          throw error(e.what());
        }
        continue;
      }
      std::string key = word.substr(0, eq), value = word.substr(eq + 1);
      if (bhyve) {
        throw error(fmt::format("'{}' inside a bhyve pptdevs= line; options go on a line of plain addresses, "
                                "e.g. `0000:03:00.0 user=alice`",
                                word));
      }
      if (key != "user") {
        throw error(fmt::format("unknown option '{}'; a line holds addresses and optionally user=NAME, or is "
                                "bhyve's pptdevs=\"1/0/0 2/0/0\"",
                                word));
      }
      if (value.empty() || user) throw error("user= takes one user name, once per line (user=alice)");
      user = value;
    }
    if (user && addresses.empty()) throw error(fmt::format("user={} without a device on its line", *user));

    for (const auto& address : addresses) {
      ConfiguredDevice device{address, user.value_or("")};
      auto same = std::find_if(devices.begin(), devices.end(), [&](const auto& d) { return d.address == address; });
      if (same == devices.end()) {
        devices.push_back(device);
      } else if (same->user != device.user) {
        throw error(fmt::format("{} is listed again for {}, after being given to {}", address.str(),
                                owner_text(device.user), owner_text(same->user)));
      }
    }
  }
  return devices;
}

std::optional<std::vector<ConfiguredDevice>> load_pptdevs(const Sysroot& sysroot, std::string_view host_path) {
  if (!sysroot.exists(host_path)) return std::nullopt;
  auto text = sysroot.read(host_path);
  if (!text) {
    throw HostError(fmt::format("cannot read {}; check its permissions", sysroot.path(host_path).string()));
  }
  return parse_pptdevs(*text, host_path);
}

}  // namespace passvm::host
