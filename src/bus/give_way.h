// bus: a device access that waits gives way to a pause of its vCPU.
//
// A vCPU's thread runs the handler of every access it traps, and nearly every handler returns at
// once. One may have to wait for something outside the guest: a passthrough device's bus master
// enable waits until guest RAM is mapped for DMA (passthru/dma_ready.h), seconds for a large guest.
// A pause of the machine (the API's vm.pause, a hot-unplug, which pauses the vCPUs while a device
// leaves) must not wait that long. So such a handler waits with its vCPU's GiveWay token: when the
// vCPU is asked to pause, the wait ends and the handler throws AccessDeferred, having changed
// nothing. The vCPU parks, and once resumed dispatches the same access again, to whatever the bus
// holds at that address then (a device that left meanwhile is gone from it).
//
// Lifetime: each vCPU owns one and installs it for its thread while it runs; other threads (tests,
// the API's) have none and wait without giving way. The vCPU serialises ask() and renew() under its
// pause lock; token() is only read by the vCPU's own thread.
#pragma once

#include <stop_token>

namespace passvm {

// Thrown by a handler that gave way; only the vCPU's dispatch catches it.
struct AccessDeferred {};

class GiveWay {
 public:
  // The calling thread's, or nullptr.
  static GiveWay* current();

  // Makes g the calling thread's GiveWay for as long as this guard lives (the previous one after).
  class Installed {
   public:
    explicit Installed(GiveWay& g);
    ~Installed();
    Installed(const Installed&) = delete;
    Installed& operator=(const Installed&) = delete;

   private:
    GiveWay* previous_;
  };

  // Stop requested: the vCPU is asked to pause, so a waiting handler ends its wait.
  std::stop_token token() const { return source_.get_token(); }
  void ask() { source_.request_stop(); }
  bool asked() const { return source_.stop_requested(); }
  // A fresh token, once the pause that asked is over.
  void renew() { source_ = std::stop_source(); }

 private:
  std::stop_source source_;
};

}  // namespace passvm
