#include "devices/console_output.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>

namespace passvm::devices {

namespace {

// One write(2) at most this much after poll() said the file takes more, so that it does not block and
// the writer stays where finish() can stop it: a pipe with room at all takes PIPE_BUF bytes, a socket
// half its buffer; a terminal may have less room than that.
constexpr size_t kChunk = 4096, kTerminalChunk = 256;

}  // namespace

ConsoleOutput::ConsoleOutput(int fd, size_t capacity)
    : fd_(fd), capacity_(capacity), chunk_(fd >= 0 && isatty(fd) ? kTerminalChunk : kChunk) {
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) throw std::runtime_error(std::string("console output: eventfd: ") + std::strerror(errno));
}

ConsoleOutput::~ConsoleOutput() {
  finish();
  close(wake_fd_);
}

void ConsoleOutput::start(std::function<void()> on_thread_start) {
  std::lock_guard g(lock_);
  if (running_ || finishing_ || fd_ < 0) return;
  // running_ only once the thread exists: if it cannot be made, output goes on being written at once.
  thread_ = std::thread([this, fn = std::move(on_thread_start)] {
    if (fn) fn();
    run();
  });
  running_ = true;
}

void ConsoleOutput::write_directly() {
  std::unique_lock g(lock_);
  if (direct_) return;
  direct_ = true;  // from here write() and message() write at once
  finishing_ = true;  // and without blocking
  // The bytes the writer is writing now are still queued: wait a little for it, or they go out twice.
  changed_.wait_for(g, std::chrono::milliseconds(100), [this] { return !in_write_; });
  std::string left = running_ ? queue_.substr(head_) : std::string();
  head_ = queue_.size();
  if (running_) {
    abandon_ = true;
    uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(wake_fd_, &one, sizeof one);
    changed_.notify_all();
    // A writer blocked in a terminal's write is left to the process's end (see finish()).
    if (changed_.wait_for(g, std::chrono::milliseconds(100), [this] { return !running_; })) {
      g.unlock();
      thread_.join();
      g.lock();
    } else {
      thread_.detach();
      running_ = false;
    }
  }
  g.unlock();
  write_now(left, false);
}

void ConsoleOutput::finish(std::chrono::milliseconds timeout) {
  std::unique_lock g(lock_);
  if (finishing_) return;  // finished, or writing directly
  finishing_ = true;
  changed_.notify_all();
  if (running_ && !changed_.wait_for(g, timeout, [this] { return head_ == queue_.size(); })) {
    dropped_ += queue_.size() - head_;
    abandon_ = true;
    uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(wake_fd_, &one, sizeof one);
  }
  // A terminal may still block the writer's last write: it is left to the process's exit after a while
  // rather than keeping the process from ending.
  if (running_ && !changed_.wait_for(g, std::chrono::milliseconds(500), [this] { return !running_; })) {
    thread_.detach();
    running_ = false;
  }
  g.unlock();
  if (thread_.joinable()) thread_.join();
  g.lock();
  queue_.clear();
  head_ = 0;
}

size_t ConsoleOutput::write(std::string_view bytes, size_t slack) {
  std::unique_lock g(lock_);
  if (!running_ || direct_) {
    if (!bytes.empty()) mid_line_ = bytes.back() != '\n';
    g.unlock();
    write_now(bytes, !finishing_);
    return bytes.size();
  }
  size_t queued = queue_.size() - head_;
  size_t n = std::min(bytes.size(), queued < capacity_ + slack ? capacity_ + slack - queued : 0);
  if (n < bytes.size()) refused_ = true;
  if (n == 0) return 0;
  mid_line_ = bytes[n - 1] != '\n';  // of what was taken: refused bytes come again, or are lost
  queue_.append(bytes.data(), n);
  changed_.notify_all();
  return n;
}

void ConsoleOutput::discarded(size_t bytes) {
  if (bytes == 0) return;
  std::lock_guard g(lock_);
  dropped_ += bytes;
}

bool ConsoleOutput::has_room() {
  std::lock_guard g(lock_);
  const bool room = !running_ || direct_ || queue_.size() - head_ < capacity_;
  if (!room) refused_ = true;
  return room;
}

void ConsoleOutput::message(std::string_view text) {
  if (text.empty()) return;
  std::unique_lock g(lock_);
  const bool break_line = mid_line_;
  if (running_ && !direct_ && queue_.size() - head_ + text.size() + 1 > capacity_ + kMessageRoom) {
    dropped_ += text.size();
    return;
  }
  mid_line_ = false;
  if (!running_ || direct_) {
    g.unlock();
    if (break_line) write_now("\n", !finishing_);
    write_now(text, !finishing_);
    return;
  }
  if (break_line) queue_.push_back('\n');
  queue_.append(text);
  changed_.notify_all();
}

ConsoleOutput::ListenerId ConsoleOutput::on_room(std::function<void()> fn) {
  std::lock_guard g(listeners_lock_);
  ListenerId id = next_listener_++;
  listeners_.emplace(id, std::move(fn));
  return id;
}

void ConsoleOutput::remove_listener(ListenerId id) {
  std::lock_guard g(listeners_lock_);
  listeners_.erase(id);
}

uint64_t ConsoleOutput::dropped() {
  std::lock_guard g(lock_);
  return dropped_;
}

size_t ConsoleOutput::pending() {
  std::lock_guard g(lock_);
  return queue_.size() - head_;
}

void ConsoleOutput::write_now(std::string_view bytes, bool may_block) {
  size_t done = 0;
  while (done < bytes.size() && fd_ >= 0) {
    if (!may_block) {
      pollfd p{fd_, POLLOUT, 0};
      if (poll(&p, 1, 0) != 1 || !(p.revents & POLLOUT)) break;
    }
    size_t n = may_block ? bytes.size() - done : std::min(bytes.size() - done, chunk_);
    ssize_t r = ::write(fd_, bytes.data() + done, n);
    // An interrupted blocking write drops the rest: the one signal that interrupts a passvm thread is a
    // vCPU's kick, which asks it to stop or pause, and a vCPU blocked here must still do so.
    if (r < 0 && errno == EINTR && !may_block) continue;
    if (r <= 0) break;
    done += static_cast<size_t>(r);
  }
  if (done < bytes.size()) {
    std::lock_guard g(lock_);
    dropped_ += bytes.size() - done;
  }
}

void ConsoleOutput::run() {
  std::unique_lock g(lock_);
  for (;;) {
    changed_.wait(g, [this] { return head_ < queue_.size() || finishing_; });
    if (abandon_ || (finishing_ && head_ == queue_.size())) break;
    const size_t n = std::min(queue_.size() - head_, chunk_);
    // The bytes stay in the queue while written: write() only appends, and only this thread takes
    // from the front, so they do not move unless the string reallocates; copy them to be sure.
    std::string chunk = queue_.substr(head_, n);
    in_write_ = true;
    g.unlock();

    pollfd p[2] = {{fd_, POLLOUT, 0}, {wake_fd_, POLLIN, 0}};
    int ready = poll(p, 2, -1);
    size_t consumed = 0;
    if (ready > 0 && (p[0].revents & (POLLOUT | POLLERR | POLLHUP | POLLNVAL))) {
      ssize_t r = ::write(fd_, chunk.data(), chunk.size());
      if (r > 0) {
        consumed = static_cast<size_t>(r);
      } else if (r < 0 && errno != EINTR && errno != EAGAIN) {
        consumed = chunk.size();  // the reader went away (EPIPE, EIO, EBADF): the guest must not wait for it
        g.lock();
        dropped_ += chunk.size();
        g.unlock();
      }
    }

    g.lock();
    in_write_ = false;
    changed_.notify_all();
    if (abandon_) break;
    head_ += consumed;
    if (head_ == queue_.size() || head_ > (size_t{64} << 10)) {
      queue_.erase(0, head_);
      head_ = 0;
    }
    changed_.notify_all();
    if (consumed > 0 && refused_) {
      refused_ = false;
      g.unlock();
      call_listeners();
      g.lock();
    }
  }
  running_ = false;
  changed_.notify_all();
}

void ConsoleOutput::call_listeners() {
  std::lock_guard g(listeners_lock_);
  // A listener is a device's (it serves the guest's ring again); an exception leaving this thread would
  // end the process, so one is said and the other listeners still hear.
  for (auto& [id, fn] : listeners_) {
    try {
      fn();
    } catch (const std::exception& e) {
      if (listener_failures_++ < 8) std::fprintf(stderr, "passvm: console output: serving the guest's output again failed: %s\n", e.what());
    }
  }
}

namespace {

ConsoleOutput* g_output = nullptr;    // stdout
ConsoleOutput* g_messages = nullptr;  // stderr: g_output when both are one file

ssize_t write_message(void* cookie, const char* data, size_t size) {
  static_cast<ConsoleOutput*>(cookie)->message({data, size});
  return static_cast<ssize_t>(size);  // a message must not turn into an error of its own
}

void finish_standard_streams() {
  // One bound for both: with stdout and stderr separate and both stalled, exit took two (plus each
  // writer's last 0.5 s). stdout's own thread writes on while stderr's queue is waited for; a slow
  // reader still gets half a second of its own after a stalled stderr.
  using std::chrono::milliseconds;
  const auto deadline = std::chrono::steady_clock::now() + ConsoleOutput::kFinishTimeout;
  auto left = [&](milliseconds at_least) {
    return std::max(at_least, std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now()));
  };
  if (g_messages && g_messages != g_output) g_messages->finish(left(milliseconds(0)));
  if (g_output) g_output->finish(left(milliseconds(500)));
}

}  // namespace

void route_standard_streams() {
  if (g_output) return;
  // Test hook: the lab makes a stalled console refuse output sooner than after the default's megabyte,
  // which takes minutes of a nested guest's serial output.
  size_t capacity = ConsoleOutput::kDefaultCapacity;
  if (const char* v = std::getenv("PASSVM_TEST_CONSOLE_BUFFER"); v && std::atol(v) > 0)
    capacity = static_cast<size_t>(std::atol(v));
  // Never deleted: a message may come from any thread until the process ends.
  g_output = new ConsoleOutput(STDOUT_FILENO, capacity);
  struct stat a {}, b {};
  const bool one_file = fstat(STDOUT_FILENO, &a) == 0 && fstat(STDERR_FILENO, &b) == 0 && a.st_dev == b.st_dev &&
                        a.st_ino == b.st_ino;
  g_messages = one_file ? g_output : new ConsoleOutput(STDERR_FILENO);
  cookie_io_functions_t io{};
  io.write = write_message;
  if (FILE* f = fopencookie(g_messages, "w", io)) {
    setvbuf(f, nullptr, _IONBF, 0);  // unbuffered, like stderr: each eprint is one message
    stderr = f;
  }
}

void standard_streams_now() {
  if (g_messages && g_messages != g_output) g_messages->write_directly();
  if (g_output) g_output->write_directly();
}

void start_standard_streams(std::function<void()> on_thread_start) {
  if (!g_output) return;
  // std::terminate's handler prints why through stderr and aborts at once: the queue must not keep it.
  static std::terminate_handler previous = std::set_terminate([] {
    standard_streams_now();
    if (previous) previous();
    std::abort();
  });
  g_output->start(on_thread_start);
  if (g_messages != g_output) g_messages->start(on_thread_start);
  std::atexit(finish_standard_streams);
}

ConsoleOutput* standard_output() {
  // Without routing (a program that never called it), stdout is written at once, as by write(2).
  static ConsoleOutput* unrouted = g_output ? nullptr : new ConsoleOutput(STDOUT_FILENO);
  return g_output ? g_output : unrouted;
}

}  // namespace passvm::devices
