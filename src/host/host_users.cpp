#include "host/host_users.h"

#include <grp.h>

#include <algorithm>
#include <charconv>
#include <sstream>
#include <vector>

#include <fmt/format.h>

#include "host/host_error.h"

namespace passvm::host {

namespace {

// The colon-separated fields of each line of a passwd- or group-format file.
std::vector<std::vector<std::string>> entries(const Sysroot& sysroot, std::string_view host_path) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream lines(sysroot.read(host_path).value_or(""));
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line.front() == '#') continue;
    std::vector<std::string> fields;
    std::istringstream parts(line);
    std::string field;
    while (std::getline(parts, field, ':')) fields.push_back(field);
    rows.push_back(std::move(fields));
  }
  return rows;
}

uint32_t number(const std::string& text) {
  uint32_t value = 0;
  std::from_chars(text.data(), text.data() + text.size(), value);
  return value;
}

HostUser user_from_files(const Sysroot& sysroot, const std::string& name) {
  for (const auto& row : entries(sysroot, "/etc/passwd")) {
    if (row.size() < 4 || row[0] != name) continue;
    HostUser user{number(row[2]), number(row[3]), {number(row[3])}, name};
    for (const auto& group : entries(sysroot, "/etc/group")) {
      if (group.size() < 4) continue;
      std::istringstream members(group[3]);
      std::string member;
      while (std::getline(members, member, ',')) {
        gid_t gid = number(group[2]);
        if (member == name && std::find(user.groups.begin(), user.groups.end(), gid) == user.groups.end()) {
          user.groups.push_back(gid);
        }
      }
    }
    return user;
  }
  throw HostError(fmt::format("unknown user '{}': not in {}", name, sysroot.path("/etc/passwd").string()));
}

}  // namespace

HostUser lookup_user(const Sysroot& sysroot, const std::string& name) {
  if (!sysroot.is_real_root()) return user_from_files(sysroot, name);
  try {
    return confine::resolve_user(name);
  } catch (const confine::ConfineError& e) {
    throw HostError(e.what());
  }
}

std::string group_name(const Sysroot& sysroot, uint32_t gid) {
  if (!sysroot.is_real_root()) {
    for (const auto& row : entries(sysroot, "/etc/group")) {
      if (row.size() >= 3 && number(row[2]) == gid) return row[0];
    }
    return std::to_string(gid);
  }
  std::vector<char> buffer(16384);
  group entry{};
  group* found = nullptr;
  if (getgrgid_r(gid, &entry, buffer.data(), buffer.size(), &found) == 0 && found) return entry.gr_name;
  return std::to_string(gid);
}

}  // namespace passvm::host
