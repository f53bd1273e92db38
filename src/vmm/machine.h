// vmm: the machine — every layer put together into one running VM.
//
// run_machine() builds a VM from a MachineConfig in the order the hardware
// would come up (KVM, RAM, buses, platform devices, the PCI bus with its
// passthrough devices, DMA mappings, firmware tables, the kernel), runs the
// vCPUs until something asks the machine to stop, and tears everything down
// in reverse. Teardown is RAII: an exception at any step, a signal, or a guest
// power-off all leave through the same destructors, so devices are reset, DMA
// unmapped and the terminal restored on every path.
#pragma once

#include "vmm/config.h"

namespace passvm {

// Returns the process exit status (exit_control.h). Throws std::runtime_error with a user-facing
// message when the machine cannot be set up; by then everything built so far is torn down.
int run_machine(const MachineConfig& config);

}  // namespace passvm
