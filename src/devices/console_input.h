// devices: ConsoleInput, the host terminal feeding the guest's serial port.
//
// A reader thread moves bytes from an input fd (stdin) into the guest's console
// (the UART's receive FIFO, or the virtio console's receive queue), waiting for
// room instead of dropping input, so a paste into a
// guest shell arrives whole. When the fd is a terminal it is put in raw mode
// (no echo, no line editing, Ctrl-C goes to the guest) and the escape
// Ctrl-A x asks passvm to quit; Ctrl-A Ctrl-A sends one Ctrl-A. A terminal is
// read on while the guest takes nothing (so the escape always works), and
// what is typed beyond kTypedAhead bytes meanwhile is dropped. The terminal
// is ALWAYS put back: by the destructor, and by restore(), which is
// async-signal-safe so a fatal-signal handler can call it. End of input stops
// the reading without spinning; stop() ends the thread through an eventfd.
#pragma once

#include <termios.h>

#include <atomic>
#include <functional>
#include <thread>
#include <vector>

#include "devices/console_sink.h"

namespace passvm::devices {

class ConsoleInput {
 public:
  static constexpr uint8_t kEscape = 0x01;  // Ctrl-A
  static constexpr uint8_t kQuitKey = 'x';
  static constexpr size_t kTypedAhead = 64 * 1024;  // a paste of that much still arrives whole

  // Starts the reader thread. on_quit runs on that thread when the user types Ctrl-A x.
  ConsoleInput(int in_fd, ConsoleSink& sink, std::function<void()> on_quit = {});
  ~ConsoleInput();
  ConsoleInput(const ConsoleInput&) = delete;
  ConsoleInput& operator=(const ConsoleInput&) = delete;

  void stop();     // idempotent; joins the thread
  void restore();  // terminal back to its saved mode; idempotent and async-signal-safe
  bool raw_mode() const { return raw_.load(); }

 private:
  void run();
  void pump();  // run()'s loop
  // Applies the escape sequence to terminal input; returns false when the user asked to quit.
  bool filter(const uint8_t* in, size_t n, std::vector<uint8_t>& out);

  const int in_fd_;
  ConsoleSink& sink_;
  std::function<void()> on_quit_;
  int stop_fd_ = -1;
  bool terminal_ = false;
  bool background_ = false;  // in_fd_ is a terminal passvm is in the background of: not read
  bool escape_seen_ = false;
  termios saved_{};
  std::atomic<bool> raw_{false};
  std::thread thread_;
};

}  // namespace passvm::devices
