// api: cloud-hypervisor's VmConfig JSON <-> passvm's MachineConfig.
//
// The API speaks cloud-hypervisor's schema (vmm/src/api/openapi/cloud-hypervisor.yaml, VmConfig and
// DeviceConfig) so that its clients (ch-remote, Kata Containers' clh driver) can drive passvm. passvm is
// a subset of cloud-hypervisor: no virtio devices, no hotplug of CPUs or memory, one PCI segment. The
// rule here is that a request is never silently weakened: a field asking for something passvm cannot
// do is refused with a 400 whose message names the JSON field and says what passvm offers instead,
// while fields that are defaults, cosmetic, or only matter to a feature passvm refuses anyway are
// ignored, as are fields passvm does not know (cloud-hypervisor's schema grows every release).
//
// Everything here is pure: no files are opened (whether the kernel or the device exists is the
// machine's check, VmControl::create/add_device). Errors are ControlError so that the server maps
// them to statuses without translating.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "vmm/config.h"

namespace passvm::api {

// A vm.add-device body, checked: the host device as a BDF, and the caller's id (may be empty).
struct DeviceRequest {
  std::string host;  // "0000:00:04.0"
  std::string id;
};

// A vm.create body -> MachineConfig. Throws ControlError: BadRequest for a malformed or unsupported
// field, Conflict for two devices with one id or one host device (cloud-hypervisor's 409 cases).
MachineConfig parse_vm_config(const nlohmann::json& body);

// A vm.add-device body (cloud-hypervisor's DeviceConfig). Throws ControlError(BadRequest).
DeviceRequest parse_device_config(const nlohmann::json& body);

// A vm.remove-device body ({"id": "..."}) -> the id. Throws ControlError(BadRequest).
std::string parse_remove_device(const nlohmann::json& body);

// MachineConfig -> VmConfig JSON as vm.info reports it: the fields passvm honours, in
// cloud-hypervisor's shape (cpus, memory, payload, devices, serial, console, platform).
nlohmann::json vm_config_json(const MachineConfig& config);

// "/sys/bus/pci/devices/0000:00:04.0/", "/sys/bus/pci/devices/0000:00:04.0" or a bare BDF in any
// form passvm accepts on its command line -> "0000:00:04.0". `field` names the JSON field in the
// error (ControlError(BadRequest)).
std::string host_bdf(std::string_view path_or_bdf, std::string_view field);

// JSON text for the wire. Paths in a config (a kernel given on passvm's command line) need not be
// UTF-8, which JSON must be: such bytes become U+FFFD instead of an exception.
std::string json_text(const nlohmann::json& j);

// "0000:00:04.0" -> "/sys/bus/pci/devices/0000:00:04.0/", the form cloud-hypervisor's docs use.
std::string sysfs_path(std::string_view bdf);

}  // namespace passvm::api
