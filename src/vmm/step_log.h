// vmm: StepLog, what -v prints: one line per setup or teardown step with the time it took, so a
// slow start or stop says where the time went. Not thread-safe: the machine's owner thread only.
#pragma once

#include <fmt/format.h>

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "base/eprint.h"

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
      eprint("passvm: {:8.1f} ms  {}\n", std::chrono::duration<double, std::milli>(now - last_).count(),
                 what);
    last_ = now;
  }
  // Starts the next step's clock now: for steps that happen while the guest runs (a hot-plug).
  void mark() { last_ = std::chrono::steady_clock::now(); }
  void note(const std::string& what) {
    if (on_) eprint("passvm:              {}\n", what);
  }
  // How long ago the process started (its start time in /proc, a clock tick's resolution), or a negative
  // value when that cannot be read: what starting the program (loading its libraries, parsing options,
  // preparing confinement) cost before the first step.
  static double process_age_ms() {
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    // Field 22, counted after the command name's closing parenthesis (the name may hold spaces).
    const char* p = strrchr(buf, ')');
    for (int field = 2; p && field < 22; ++field) p = strchr(p + 1, ' ');
    if (!p) return -1;
    char* end = nullptr;
    unsigned long long ticks = strtoull(p + 1, &end, 10);
    timespec now{};
    long hz = sysconf(_SC_CLK_TCK);
    if (end == p + 1 || hz <= 0 || clock_gettime(CLOCK_BOOTTIME, &now) != 0) return -1;
    double now_s = static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) / 1e9;
    return (now_s - static_cast<double>(ticks) / static_cast<double>(hz)) * 1000;
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
