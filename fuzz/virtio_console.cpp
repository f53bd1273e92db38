// Fuzz target: the virtio console and its MMIO transport (src/virtio), as a guest driver drives them.
// Each input starts from a driver that has set the device up as Linux does (queues of 16 entries, rings
// in guest RAM); then its operations write and read the registers (any offset, any value: resets,
// queue moves, notifications), write guest RAM where the rings and buffers are (descriptor tables,
// available rings and indices: loops, indices past the queue, buffers outside RAM or across its end),
// and feed host input. Besides the sanitizers it checks that the interrupt line always follows the
// interrupt status register and is only ever told a change.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "fuzz/ops.h"
#include "memory/guest_memory.h"
#include "memory/layout.h"
#include "virtio/console.h"
#include "virtio/mmio_transport.h"

namespace {

using passvm::fuzz::Op;

constexpr uint64_t kRam = 16 * passvm::layout::MiB;
constexpr uint64_t kRings = 0x100000;  // queue q's rings at kRings + q * 0x1000: desc, +0x400 avail, +0x800 used
constexpr uint64_t kBuffers = 0x200000;
constexpr uint16_t kQueueSize = 16;

[[noreturn]] void fail(const char* what, uint64_t a) {
  std::fprintf(stderr, "%s (%#llx)\n", what, static_cast<unsigned long long>(a));
  std::abort();
}

passvm::GuestMemory& memory() {
  static passvm::GuestMemory mem(kRam, false);  // one mapping for every input; rings are rewritten each time
  return mem;
}

struct Harness {
  passvm::GuestMemory& mem = memory();
  passvm::virtio::Console console{nullptr};
  bool irq = false;
  passvm::virtio::MmioTransport transport{mem, console, [this](bool level) {
                                             if (level == irq) fail("the interrupt line was set to what it was", level);
                                             irq = level;
                                           }};
  Harness() { console.attach(transport); }

  uint32_t reg(uint64_t offset) {
    uint32_t v = 0;
    transport.read(offset, {reinterpret_cast<uint8_t*>(&v), 4});
    return v;
  }
  void set(uint64_t offset, uint32_t v) { transport.write(offset, {reinterpret_cast<const uint8_t*>(&v), 4}); }
  void put16(uint64_t gpa, uint16_t v) { mem.write(gpa, {reinterpret_cast<const uint8_t*>(&v), 2}); }
  uint16_t get16(uint64_t gpa) {
    uint16_t v;
    mem.read(gpa, {reinterpret_cast<uint8_t*>(&v), 2});
    return v;
  }

  void setup() {
    std::memset(mem.host_address(kRings, 0x2000), 0, 0x2000);
    set(0x70, 1);
    set(0x70, 3);
    set(0x24, 1);
    set(0x20, 1);
    set(0x70, 11);
    for (uint32_t q = 0; q < 2; q++) {
      set(0x30, q);
      set(0x38, kQueueSize);
      set(0x80, static_cast<uint32_t>(kRings + q * 0x1000));
      set(0x90, static_cast<uint32_t>(kRings + q * 0x1000 + 0x400));
      set(0xa0, static_cast<uint32_t>(kRings + q * 0x1000 + 0x800));
      set(0x44, 1);
    }
    set(0x70, 15);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Harness h;
  h.setup();
  passvm::fuzz::OpReader ops(std::span(data, size));
  while (auto op = ops.next()) {
    const uint16_t q = op->size & 1;
    const uint64_t rings = kRings + q * 0x1000;
    switch (op->kind % 6) {
      case 0:  // a register write: mostly aligned dwords, sometimes not
        if (op->size & 0x80)
          h.transport.write(op->offset % 0x200, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&op->value),
                                                                         (op->size >> 1) % 5));
        else
          h.set((op->offset % 0x80) * 4, op->value);
        break;
      case 1: {  // a register or config read of 0 to 8 bytes
        uint8_t buf[8];
        h.transport.read(op->offset % 0x200, std::span(buf, (op->size >> 1) % 9));
        break;
      }
      case 2: {  // a descriptor: to a buffer, near the end of RAM, or anywhere
        uint64_t addr = op->size & 2 ? kBuffers + (op->wide & 0xffff) : op->size & 4 ? kRam - (op->wide & 0xff) : op->wide;
        uint8_t d[16];
        uint32_t len = op->value & 0xffff;
        uint16_t flags = static_cast<uint16_t>(op->value >> 16) & 7, next = static_cast<uint16_t>(op->offset >> 8) % 20;
        std::memcpy(d, &addr, 8);
        std::memcpy(d + 8, &len, 4);
        std::memcpy(d + 12, &flags, 2);
        std::memcpy(d + 14, &next, 2);
        h.mem.write(rings + 16ull * ((op->offset & 0xff) % kQueueSize), d);
        break;
      }
      case 3: {  // publish a head (sometimes past the queue) and maybe notify; or set the ring's flags/index raw
        const uint64_t avail = rings + 0x400;
        if (op->size & 2) {
          h.put16(avail + (op->size & 4 ? 0 : 2), static_cast<uint16_t>(op->value));
        } else {
          uint16_t idx = h.get16(avail + 2);
          h.put16(avail + 4 + 2 * (idx % kQueueSize), static_cast<uint16_t>(op->offset % 20));
          h.put16(avail + 2, static_cast<uint16_t>(idx + 1));
        }
        if (op->size & 8) h.set(0x50, q);
        break;
      }
      case 4: {  // host input of 0 to 63 bytes
        uint8_t in[64];
        std::memset(in, 'a', sizeof in);
        h.console.receive(std::span<const uint8_t>(in, op->value % 64));
        break;
      }
      default:  // the driver's whole setup again (a reset first when asked)
        if (op->size & 2) h.set(0x70, 0);
        h.setup();
        break;
    }
    if (h.irq != (h.reg(0x60) != 0)) fail("the interrupt line does not follow the interrupt status", h.reg(0x60));
  }
  return 0;
}
