// host: the persistent reservation list, /etc/passvm/pptdevs.conf.
//
// It names the devices the host must never drive: they are claimed for
// vfio-pci at boot. Two spellings are accepted so a bhyve loader.conf line can
// be pasted as is: one or more addresses per line, or
//   pptdevs="1/0/0 2/0/0"      (also pptdevs2=, pptdevs3=, as bhyve allows)
// '#' starts a comment. Any address form PciAddress::parse takes is valid.
//
// A line of addresses may also carry options, words of the form key=value in
// any position; they apply to every address on that line and to nothing else:
//   0000:03:00.0 user=alice     /dev/vfio/GROUP is given to alice
//   0000:03:00.0 id=144d:a808   claimed only while the device there is that one
// bhyve lines take no options, and a word is an option exactly when it
// contains '=' (no address form does), so no line reads two ways. id= names one
// device, so its line holds one address: an address alone names a slot, and a
// firmware update or a card added elsewhere can renumber the buses so that the
// slot holds another device (the host's boot disk, its NIC) at the next boot.
//
// A line that cannot be read is reported and left out; the other lines still
// count, so that one typo does not hand every listed device back to the host.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "host/pci_address.h"
#include "host/sysroot.h"

namespace passvm::host {

inline constexpr std::string_view kDefaultConfigPath = "/etc/passvm/pptdevs.conf";

struct PciId {
  uint16_t vendor = 0, device = 0;
  std::string str() const;  // "144d:a808", as lspci -n prints it
  bool operator==(const PciId&) const = default;
};

struct ConfiguredDevice {
  PciAddress address;
  std::string user;         // who gets the device's VFIO group; "" leaves it to root
  std::optional<PciId> id;  // the device expected at the address; none: whatever is there
  std::string origin;       // "pptdevs.conf:3", for messages
  bool operator==(const ConfiguredDevice&) const = default;
};

struct PptdevsConfig {
  std::vector<ConfiguredDevice> devices;  // from the lines that could be read, in order, duplicates dropped
  std::vector<std::string> errors;        // "pptdevs.conf:3: ..." for each line that could not
};

// Parses the text of a config; `origin` names it in errors ("pptdevs.conf:3: ...").
// A device listed twice with different options is an error of the later line, and is left out
// altogether: which owner it should have is not known.
PptdevsConfig parse_pptdevs(std::string_view text, std::string_view origin);

// nullopt when the file does not exist. Throws HostError when it cannot be read.
std::optional<PptdevsConfig> load_pptdevs(const Sysroot& sysroot, std::string_view host_path);

// Why `configured` must not be claimed as what is at its address now (vendor and device of the
// host's device there), or nullopt when it may be.
std::optional<std::string> id_mismatch(const ConfiguredDevice& configured, PciId found, std::string_view found_class);

}  // namespace passvm::host
