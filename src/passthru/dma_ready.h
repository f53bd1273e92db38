// passthru: bus mastering held until guest RAM is in the IOMMU.
//
// Pinning guest RAM for DMA takes about as long as zeroing it (seconds for large guests), and the
// guest need not wait for it: nothing a device does reaches guest RAM before the guest lets it master
// the bus (the command register's Bus Master Enable; MSI writes need it too), and passvm starts every
// device with it off (handover.h). So the machine starts the guest while guest RAM is pinned, and a
// guest's write that turns bus mastering on waits here, in its vCPU, until the mapping is complete.
// Drivers set it in their probe, late in a boot, so the wait is usually none. A pause of the vCPU
// ends its wait (bus/give_way.h): the write is made again after the pause.
//
// Lifetime: owned by the machine, shared by its passthrough devices; it outlives them. open() or fail()
// is called once, by whoever maps guest RAM; a stop that abandons the mapping calls fail() too, so no
// vCPU stays blocked. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <string>

namespace passvm::passthru {

class DmaReady {
 public:
  // Guest RAM is mapped: bus mastering may go on.
  void open();
  // Guest RAM will not be mapped (the mapping failed, or the machine stops): bus mastering stays off.
  void fail(std::string why);
  enum class Outcome { Open, Failed, GaveWay };
  // Blocks until open() (Open) or fail() (Failed), or until give_way is asked to stop (GaveWay).
  Outcome wait(std::stop_token give_way = {});
  bool is_open() const;
  // Why fail() was called ("" before, or after open()).
  std::string why() const;
  // For the lab's test of the wait (PASSVM_TEST_HOLD_DMA_MAP): blocks until a wait() is blocked, the
  // state is no longer pending, or `limit` passes; true in the first case.
  bool wait_for_a_waiter(std::chrono::milliseconds limit);

 private:
  enum class State { Pending, Open, Failed };
  mutable std::mutex lock_;
  std::condition_variable_any changed_;  // _any: its wait can end at a stop request
  State state_ = State::Pending;
  std::string why_;
  int waiters_ = 0;
};

}  // namespace passvm::passthru
