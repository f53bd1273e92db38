#include "passthru/dma_ready.h"

namespace passvm::passthru {

void DmaReady::open() {
  {
    std::lock_guard g(lock_);
    if (state_ != State::Pending) return;
    state_ = State::Open;
  }
  changed_.notify_all();
}

void DmaReady::fail(std::string why) {
  {
    std::lock_guard g(lock_);
    if (state_ != State::Pending) return;
    state_ = State::Failed;
    why_ = std::move(why);
  }
  changed_.notify_all();
}

DmaReady::Outcome DmaReady::wait(std::stop_token give_way) {
  std::unique_lock g(lock_);
  if (state_ == State::Pending) {
    waiters_++;
    changed_.notify_all();
    bool decided = changed_.wait(g, give_way, [this] { return state_ != State::Pending; });
    waiters_--;
    if (!decided) return Outcome::GaveWay;
  }
  return state_ == State::Open ? Outcome::Open : Outcome::Failed;
}

bool DmaReady::wait_for_a_waiter(std::chrono::milliseconds limit) {
  std::unique_lock g(lock_);
  changed_.wait_for(g, limit, [this] { return waiters_ > 0 || state_ != State::Pending; });
  return waiters_ > 0 && state_ == State::Pending;
}

bool DmaReady::is_open() const {
  std::lock_guard g(lock_);
  return state_ == State::Open;
}

std::string DmaReady::why() const {
  std::lock_guard g(lock_);
  return why_;
}

}  // namespace passvm::passthru
