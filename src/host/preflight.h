// host: `passvm check`, is this host able to pass a device through?
//
// Each line is pass, warn or fail, says what was looked at, and for anything
// short of pass, the command or setting that fixes it. Only things that would
// make a passthrough VM fail are "fail"; things that make it slower or that
// `passvm reserve` fixes by itself are "warn".
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "host/sysroot.h"

namespace passvm::host {

enum class Verdict { Pass, Warn, Fail };
std::string_view verdict_name(Verdict v);

struct CheckLine {
  Verdict verdict;
  std::string name;
  std::string detail;
  std::string fix;  // empty on pass
};

// What the check needs from the process rather than the filesystem, so tests can vary it.
struct ProcessFacts {
  uint64_t guest_memory = 512ull << 20;
  std::optional<uint64_t> memlock_limit;  // nullopt = unlimited
  bool root = false;
  static ProcessFacts current(uint64_t guest_memory);
};

std::vector<CheckLine> run_preflight(const Sysroot& sysroot, const ProcessFacts& facts);

// "512M", "2G", "1048576" (bytes), "64K"; throws HostError naming the format.
uint64_t parse_size(std::string_view text);

}  // namespace passvm::host
