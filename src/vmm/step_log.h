// vmm: StepLog, what -v prints: one line per setup or teardown step with the time it took, so a
// slow start or stop says where the time went. Not thread-safe: the machine's owner thread only.
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace passvm {

class StepLog {
 public:
  explicit StepLog(bool on) : on_(on), last_(std::chrono::steady_clock::now()), start_(last_) {}
  ~StepLog() {
    try {
      if (!exit_step_.empty()) (*this)(exit_step_);
    } catch (...) {  // a closed stderr must not turn an exit into a crash
    }
  }
  StepLog(const StepLog&) = delete;
  StepLog& operator=(const StepLog&) = delete;
  // A step that ends when this log is destroyed, i.e. after everything declared after it.
  void at_exit(std::string what) { exit_step_ = std::move(what); }
  void operator()(const std::string& what) {
    auto now = std::chrono::steady_clock::now();
    if (on_)
      fmt::print(stderr, "passvm: {:8.1f} ms  {}\n", std::chrono::duration<double, std::milli>(now - last_).count(),
                 what);
    last_ = now;
  }
  // Starts the next step's clock now: for steps that happen while the guest runs (a hot-plug).
  void mark() { last_ = std::chrono::steady_clock::now(); }
  void note(const std::string& what) {
    if (on_) fmt::print(stderr, "passvm:              {}\n", what);
  }
  double total_ms() const {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  bool on_;
  std::string exit_step_;
  std::chrono::steady_clock::time_point last_, start_;
};

}  // namespace passvm
