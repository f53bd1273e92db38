// vmm: what the user asked for, as plain data.
//
// The CLI (src/cli) turns the command line into a MachineConfig; the machine
// (machine.h) builds and runs a VM from it. Keeping the two apart lets the
// parsing be tested without KVM.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace passvm {

// One -s SLOT[:FUNC],EMULATION[,CONFIG] option.
struct SlotConfig {
  static constexpr uint32_t kAnySlot = 0xffffffff;  // the API's devices: the machine picks a free slot
  uint32_t slot = 0;
  uint32_t func = 0;
  std::string emulation;  // "hostbridge", "passthru", "lpc"
  std::string config;     // e.g. the host device of a passthru slot, "0000:03:00.0" or "3/0/0"
  std::string rom;        // passthru: rom=FILE, the expansion ROM the guest sees instead of the device's
  bool p2p = true;        // passthru: p2p=on|off, the device's BARs mapped into the IOMMU for peer-to-peer DMA
  std::string id;         // passthru: the device's id in the API ("_vfioN" when the user gave none)
};

struct MachineConfig {
  std::string name = "passvm";
  uint32_t cpus = 1;
  uint64_t memory = 256ull << 20;
  bool hugepages = false;
  std::vector<SlotConfig> slots;
  std::string com1;  // "stdio" or empty (no console)
  std::string virtio_console;  // "stdio" (the guest's hvc0 on this terminal, input included) or empty
  std::string kernel;
  std::string initrd;
  std::string cmdline;
  bool stats = false;           // print device and vCPU counters at exit
  bool verbose = false;         // say what is being set up, with timings
  bool unpack_on_host = true;
  bool pvpanic = true;          // the pvpanic device: a guest's panic is reported (the command line stops on it)
  bool p2p = true;              // the API's platform.vfio_p2p_dma: what devices added later get (SlotConfig::p2p)
  bool nested = true;           // the API's cpus.nested: the guest may run guests of its own (VMX/SVM shown)
};

}  // namespace passvm
