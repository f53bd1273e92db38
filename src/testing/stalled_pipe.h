// testing: StalledPipe, a pipe whose reader stopped reading: full, and blocking for its writer, as a
// terminal or log pipe nobody reads. For tests of what the guest's console does then.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

namespace passvm::testing {

struct StalledPipe {
  int fds[2] = {-1, -1};  // fds[1] is the full, blocking write end

  StalledPipe() {
    if (pipe2(fds, O_CLOEXEC) != 0) return;
    fcntl(fds[1], F_SETFL, O_NONBLOCK);
    std::string block(65536, kFiller);
    while (::write(fds[1], block.data(), block.size()) > 0) {
    }
    fcntl(fds[1], F_SETFL, 0);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
  }
  ~StalledPipe() {
    for (int fd : fds)
      if (fd >= 0) close(fd);
  }
  StalledPipe(const StalledPipe&) = delete;
  StalledPipe& operator=(const StalledPipe&) = delete;

  // The reader reads again, until `want` bytes other than the filler came or five seconds passed.
  std::string read_until(size_t want) {
    std::string got;
    char buf[65536];
    for (int i = 0; i < 500 && got.size() < want; i++) {
      ssize_t n;
      while ((n = ::read(fds[0], buf, sizeof buf)) > 0)
        for (ssize_t k = 0; k < n; k++)
          if (buf[k] != kFiller) got.push_back(buf[k]);
      if (got.size() < want) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return got;
  }

  static constexpr char kFiller = '\x7f';  // what fills the pipe: no test output contains it
};

}  // namespace passvm::testing
