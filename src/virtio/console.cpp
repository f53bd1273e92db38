#include "virtio/console.h"

#include <algorithm>
#include <cstring>

namespace passvm::virtio {

Console::Console(devices::ConsoleOutput* output) : output_(output) {}

Console::~Console() {
  if (output_ && listener_) output_->remove_listener(listener_);
}

void Console::attach(MmioTransport& transport) {
  transport_ = &transport;
  // Buffers left in the ring while the console was full go out once it has room.
  if (output_ && !listener_)
    listener_ = output_->on_room([this] {
      transport_->with_queue(kTransmitQueue, [this](Queue* queue) { return queue && transmit(*queue); });
    });
}

void Console::read_config(uint64_t, std::span<uint8_t> data) {
  // cols, rows, max_nr_ports, emerg_wr: meaningful only with features this device does not offer.
  std::memset(data.data(), 0, data.size());
}

void Console::reset() {
  // Input refused before the reset may be offered again once the driver posts new buffers.
  room_.room();
}

bool Console::notified(uint16_t index, Queue& queue) {
  if (index == kTransmitQueue) return transmit(queue);
  if (index == kReceiveQueue) room_.room();  // the driver posted buffers for input
  return false;
}

bool Console::transmit(Queue& queue) {
  bool used = false;
  // One ring's worth per notification: the driver notifies again for what it adds after this (the
  // device never suppresses notifications), and a guest whose other vCPU refills the ring as fast as it
  // is served must not hold this vCPU (and the transport's lock) here for ever.
  for (uint32_t left = queue.size(); left > 0; left--) {
    if (output_ && !output_->has_room()) break;  // the rest waits in the ring for the listener
    auto chain = queue.pop();
    if (!chain) break;
    // Taken whole, past the output's capacity if need be (Linux's buffers are a page at most), so that a
    // reader that is merely slow loses nothing. A chain may be as large as guest RAM: what goes beyond
    // kChainSlack is cut, not copied, and counted as dropped. (The output counts what this chain queued
    // already against the slack.)
    for (const Buffer& b : chain->readable) {
      if (output_) {
        size_t taken = output_->write({reinterpret_cast<const char*>(b.data), b.size}, kChainSlack);
        output_->discarded(b.size - taken);
      }
      transmitted_.fetch_add(b.size, std::memory_order_relaxed);
    }
    queue.push_used(chain->head, 0);
    used = true;
  }
  return used;
}

size_t Console::receive(std::span<const uint8_t> bytes) {
  if (!transport_) return 0;
  size_t taken = 0;
  transport_->with_queue(kReceiveQueue, [&](Queue* queue) {
    bool used = false;
    // One ring's worth at most, as transmit(): chains with no room in them (length 0), refilled by
    // another vCPU as fast as they are used, must not hold this thread and the transport's lock.
    for (uint32_t left = queue ? queue->size() : 0; left > 0 && taken < bytes.size(); left--) {
      auto chain = queue->pop();
      if (!chain) break;
      uint32_t written = 0;
      for (const Buffer& b : chain->writable) {
        size_t n = std::min<size_t>(b.size, bytes.size() - taken);
        std::memcpy(b.data, bytes.data() + taken, n);
        taken += n;
        written += static_cast<uint32_t>(n);
        if (taken == bytes.size()) break;
      }
      queue->push_used(chain->head, written);
      used = true;
    }
    // The rest waits in ConsoleInput until the driver posts buffers (or, not running yet, sets up the queue).
    room_.offered(bytes.size(), taken);
    return used;
  });
  return taken;
}

}  // namespace passvm::virtio
