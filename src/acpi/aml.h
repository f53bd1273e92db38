// acpi: the guest's ACPI tables, and the tiny AML encoder that writes the DSDT.
//
// The tables tell the guest OS what firmware would: where the PCI bus and its
// windows are, which GSI each PCI slot's INTx reaches, how many CPUs exist,
// where ECAM is, how to power off and reset. They are built once, before the
// guest runs, into the BIOS ROM area of guest memory (layout::kAcpiStart),
// where Linux finds the RSDP by its signature.
//
// aml.h encodes just the AML passvm's DSDT needs: names, integers, strings,
// EISA IDs, packages, buffers, scopes, devices, methods, resource templates,
// and the few statements of the PCI hotplug methods (I/O fields, If, And,
// ShiftLeft, Store, Notify, calls). Every function returns the encoded bytes, so terms
// nest as plain function calls. Name paths are checked and bad ones throw
// std::invalid_argument.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace passvm::acpi::aml {

using Bytes = std::vector<uint8_t>;

// PkgLength for `content` bytes that follow it (the encoding counts its own bytes).
Bytes pkg_length(size_t content);
// "\\_SB.PCI0", "_HID", "^FOO": segments of up to 4 characters, padded with '_'.
Bytes name_string(std::string_view path);

Bytes integer(uint64_t value);  // shortest form: Zero, One, Ones or a prefixed byte/word/dword/qword
Bytes string(std::string_view text);
Bytes eisa_id(std::string_view id);  // "PNP0A08" as the 32-bit compressed EISA ID integer

Bytes name(std::string_view path, const Bytes& value);
Bytes package(const std::vector<Bytes>& elements);
Bytes buffer(const Bytes& data);
Bytes scope(std::string_view path, const std::vector<Bytes>& terms);
Bytes device(std::string_view path, const std::vector<Bytes>& terms);
Bytes method(std::string_view path, int args, bool serialized, const std::vector<Bytes>& terms);
Bytes return_value(const Bytes& value);

// Just what the PCI hotplug methods need: a SystemIO region with 32-bit fields, and statements.
Bytes operation_region_io(std::string_view path, uint16_t port, uint16_t length);
// Field (region, DWordAcc, NoLock, WriteAsZeros) { name, 32, ... }
Bytes field_dwords(std::string_view region, const std::vector<std::string_view>& names);
Bytes if_then(const Bytes& predicate, const std::vector<Bytes>& terms);
Bytes and_of(const Bytes& a, const Bytes& b);         // And (a, b) with no target: the value
Bytes shift_left(const Bytes& value, const Bytes& by);  // ShiftLeft (value, by), the value
Bytes store(const Bytes& value, const Bytes& target);   // Store (value, target); target a name or local
Bytes notify(std::string_view object, const Bytes& value);
Bytes local(int n);  // Local0-7
Bytes arg(int n);    // Arg0-6
// A call: the method's name, then its arguments (the method must be defined earlier in the table).
Bytes call(std::string_view method, const std::vector<Bytes>& args = {});

// A ResourceTemplate () buffer: add descriptors, then build() appends the end tag.
class ResourceTemplate {
 public:
  // IO (Decode16, base, base, align, length)
  ResourceTemplate& io(uint16_t base, uint8_t length, uint8_t align = 1);
  // IRQNoFlags () {irq}: edge, active high, the ISA default
  ResourceTemplate& irq(uint8_t irq);
  // WordBusNumber / WordIO (producer, fixed min and max, whole range)
  ResourceTemplate& bus_numbers(uint16_t first, uint16_t last);
  ResourceTemplate& io_window(uint16_t first, uint16_t last);
  // DWordMemory / QWordMemory (producer, fixed, non-cacheable or prefetchable, read-write)
  ResourceTemplate& memory32_window(uint32_t first, uint32_t last, bool prefetchable = false);
  ResourceTemplate& memory64_window(uint64_t first, uint64_t last, bool prefetchable = false);
  // Memory32Fixed (ReadWrite, base, length)
  ResourceTemplate& memory32_fixed(uint32_t base, uint32_t length);

  Bytes build() const;  // the Buffer term

 private:
  Bytes body_;
};

}  // namespace passvm::acpi::aml
