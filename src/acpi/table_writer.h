// acpi: helpers shared by the table builders: the common header and checksums.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace passvm::acpi {

inline constexpr size_t kHeaderSize = 36;
inline constexpr char kOemId[] = "PASSVM";      // 6 characters
inline constexpr char kOemTableId[] = "PASSVMPC";  // 8 characters

// A table: the standard header (signature, length, revision, OEM and creator IDs) followed
// by body, with the checksum filled in.
std::vector<uint8_t> make_table(std::string_view signature, uint8_t revision, const std::vector<uint8_t>& body);

// Sets byte `at` so that bytes [0, len) sum to zero.
void fix_checksum(uint8_t* table, size_t len, size_t at);

void put_le(std::vector<uint8_t>& out, uint64_t v, int bytes);

}  // namespace passvm::acpi
