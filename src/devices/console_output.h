// devices: ConsoleOutput, the guest's console output and passvm's messages on their way to a file
// descriptor passvm does not control (a terminal, a pipe, a file, a log collector's socket).
//
// Why a thread of its own: a reader that stops reading (a pipe whose reader hung, a terminal on
// Ctrl-S, a log collector that stalled) blocks write(2) for as long as it likes. Written by the
// device that produced the bytes, that blocked a vCPU with the device's lock held, and then the
// control loop behind that lock: SIGTERM and API requests waited for the reader. Here the devices
// only queue bytes, which never blocks, and one writer thread writes them out.
//
// - Guest output (write()) is queued up to `capacity` bytes and refused beyond: the device keeps what
//   was refused and tells the guest it is busy (the UART's line status, the virtio console's ring),
//   as a real serial line does. Listeners added with on_room() hear when room appears after a refusal.
// - passvm's messages (message()) are never refused for guest output: they may go beyond `capacity`
//   by kMessageRoom, and are dropped (and counted) only past that. A message that follows guest output
//   that did not end its line starts on a line of its own.
// - A write error (the reader went away: EPIPE, EIO) drops what was being written: the guest must not
//   stall on a console nobody will read.
//
// Lifetime rules:
// - Until start(), and after finish(), write() and message() write at once, in the calling thread: before
//   start() blocking (setup messages, before any thread exists), after finish() only what the file takes
//   without blocking (the process is ending and must not wait for a reader).
// - start() once, on a thread that may start threads; the writer calls `on_thread_start` first (it
//   confines itself).
// - finish() writes what is queued for at most `timeout`, drops the rest, and ends the writer thread.
//   Nothing is lost unless the reader stalls that long. A writer still blocked in a terminal's write
//   half a second later is detached (the process is ending): finish() never hangs. A detached writer
//   still refers to the object, so one whose file may be a terminal must outlive its writer: the
//   standard streams' objects are never deleted.
// - A listener is called on the writer thread with no lock of this object held; remove it (remove_listener)
//   before what it refers to goes: removal waits for a call in progress.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

namespace passvm::devices {

class ConsoleOutput {
 public:
  static constexpr size_t kDefaultCapacity = size_t{1} << 20;
  static constexpr size_t kMessageRoom = size_t{256} << 10;
  static constexpr std::chrono::milliseconds kFinishTimeout{2000};

  // Output to fd (-1: nowhere, everything is taken and dropped).
  explicit ConsoleOutput(int fd, size_t capacity = kDefaultCapacity);
  ~ConsoleOutput();  // finish(kFinishTimeout)
  ConsoleOutput(const ConsoleOutput&) = delete;
  ConsoleOutput& operator=(const ConsoleOutput&) = delete;

  int fd() const { return fd_; }

  void start(std::function<void()> on_thread_start = {});
  void finish(std::chrono::milliseconds timeout = kFinishTimeout);

  // Guest output: queues as much as there is room for and returns how many bytes that was. `slack` lets
  // this write go that far beyond the capacity: a device that checked has_room() before taking a buffer
  // from the guest passes the buffer's bound, so that the buffer is not cut.
  size_t write(std::string_view bytes, size_t slack = 0);
  // Guest output a device refused and will not offer again (past its bound): counted in dropped().
  void discarded(size_t bytes);
  // Whether write() would take a byte now. "No" counts as a refusal: the listeners hear when there is.
  bool has_room();
  // passvm's own message (see above).
  void message(std::string_view text);

  using ListenerId = uint64_t;
  ListenerId on_room(std::function<void()> fn);
  void remove_listener(ListenerId id);

  // Bytes dropped: by write errors, messages past their room, and what finish() could not write.
  uint64_t dropped();
  // Bytes queued and not yet written.
  size_t pending();

 private:
  void run();
  void write_now(std::string_view bytes, bool may_block);
 public:
  // Stops queuing: writes what is queued, and from then on everything, at once and without blocking
  // (what the file does not take is dropped). The writer thread is left to the process's end.
  void write_directly();

 private:
  void call_listeners();

  const int fd_;
  const size_t capacity_;
  const size_t chunk_;  // the most one write(2) of the writer asks for
  std::mutex lock_;
  std::condition_variable changed_;  // bytes queued, bytes written, or finishing
  std::string queue_;                // queue_[head_..] is still to be written
  size_t head_ = 0;
  bool refused_ = false;    // write() refused some since the listeners last heard of room
  bool mid_line_ = false;   // the last guest byte queued did not end its line
  bool running_ = false;    // the writer thread runs
  bool finishing_ = false;
  bool abandon_ = false;    // finish()'s time is up: drop what is left
  bool direct_ = false;     // write_directly(): no more queuing
  bool in_write_ = false;   // the writer is writing bytes it has not yet taken off the queue
  int listener_failures_ = 0;  // under listeners_lock_
  uint64_t dropped_ = 0;
  int wake_fd_ = -1;        // an eventfd: wakes the writer from waiting for the file to take more
  std::thread thread_;

  std::mutex listeners_lock_;  // held while listeners are called: removal waits for a call in progress
  std::map<ListenerId, std::function<void()>> listeners_;
  ListenerId next_listener_ = 1;
};

// The process's standard streams for a VMM run: the guest's console on stdout, passvm's messages on
// stderr. When both are one file (same device and inode: one terminal, one log), they share one
// ConsoleOutput, so that a message starts on a line of its own. Call route_standard_streams() once, on
// the main thread before other threads exist: from then on `stderr` writes through the messages' output.
// start_standard_streams() starts their writers (and has them finish at exit). The objects live until
// the process ends.
void route_standard_streams();
void start_standard_streams(std::function<void()> on_thread_start);
// stdout's output; one that writes at once (never started) when route_standard_streams() was not called.
ConsoleOutput* standard_output();

// From now on the standard streams write at once, without blocking, what is queued first: for the
// process's last words (std::terminate's message) before it aborts.
void standard_streams_now();

}  // namespace passvm::devices
