#include "host/pptdevs_config.h"

#include <algorithm>
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

}  // namespace

std::vector<PciAddress> parse_pptdevs(std::string_view text, std::string_view origin) {
  std::vector<PciAddress> devices;
  size_t line_no = 0;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    std::string_view line = text.substr(start, end == std::string_view::npos ? end : end - start);
    start = end == std::string_view::npos ? text.size() + 1 : end + 1;
    ++line_no;
    line = trim(line.substr(0, line.find('#')));
    if (line.empty()) continue;

    std::string_view values = line;
    if (auto eq = line.find('='); eq != std::string_view::npos) {
      std::string_view key = trim(line.substr(0, eq));
      if (!is_pptdevs_key(key)) {
        throw HostError(fmt::format("{}:{}: unknown setting '{}'; only pptdevs=, pptdevs2=, pptdevs3= or "
                                    "plain addresses (one or more per line) are allowed",
                                    origin, line_no, key));
      }
      values = trim(line.substr(eq + 1));
      if (!values.empty() && (values.front() == '"' || values.front() == '\'')) {
        if (values.size() < 2 || values.back() != values.front()) {
          throw HostError(fmt::format("{}:{}: unterminated quote in '{}'; close it as in pptdevs=\"1/0/0 2/0/0\"",
                                      origin, line_no, line));
        }
        values = values.substr(1, values.size() - 2);
      }
    }

    std::istringstream words{std::string(values)};
    std::string word;
    while (words >> word) {
      PciAddress address;
      try {
        address = PciAddress::parse(word);
      } catch (const HostError& e) {
        throw HostError(fmt::format("{}:{}: {}", origin, line_no, e.what()));
      }
      if (std::find(devices.begin(), devices.end(), address) == devices.end()) devices.push_back(address);
    }
  }
  return devices;
}

std::optional<std::vector<PciAddress>> load_pptdevs(const Sysroot& sysroot, std::string_view host_path) {
  if (!sysroot.exists(host_path)) return std::nullopt;
  auto text = sysroot.read(host_path);
  if (!text) {
    throw HostError(fmt::format("cannot read {}; check its permissions", sysroot.path(host_path).string()));
  }
  return parse_pptdevs(*text, host_path);
}

}  // namespace passvm::host
