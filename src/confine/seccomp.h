// confine: what passvm may do once its setup is done.
//
// Every passvm thread belongs to one class (ThreadClass) and, at its start, calls enter() for it:
// the thread gets its class's name (what `ps -L`, /proc/PID/task/*/comm and the kernel's audit log
// show) and its class's seccomp filter, an allow list of system calls, with ioctl allowed only for
// the KVM, VFIO and terminal request numbers that class uses. The lists are in seccomp_lists.cpp, kept
// against the calls each class made in a traced lab run (src/confine/recorded/, see the README).
//
// Lifetime rules:
// - configure() once, on the main thread, before any other thread starts: it prepares every
//   class's filter (compiled at build time, seccomp_programs.h; the run-time values put in) and
//   installs the SIGSYS handler. enter() then only loads a prepared program, so a thread confines
//   itself with two system calls and no allocation.
// - A filter is never removed, and filters stack: a thread started by a confined thread keeps its
//   creator's filter as well as its own (the kernel applies both). The main thread confines itself
//   last (enter(ThreadClass::Control) once the VM runs, or the API listens), so the threads it
//   starts before are not bound by its list; threads it starts after are bound by both.
// - Kill mode: a forbidden call raises SIGSYS; the handler names the call and the thread on stderr,
//   restores the terminal, and ends the process with kExitSeccomp. The kernel then closes every
//   file, so VFIO resets the devices and the IOMMU mappings go as on any exit.
// - Log mode: a forbidden call is let through and the kernel logs it (dmesg or the audit log:
//   "type=1326 ... comm=THREAD ... syscall=NR"). Off: no filter at all; threads are still named.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace passvm::confine {

enum class SeccompMode { Kill, Log, Off };

enum class ThreadClass {
  Control,     // main: the control loop, setup and teardown of machines, hotplug
  Vcpu,        // runs KVM_RUN and the device models the guest's exits reach
  Interrupts,  // a passthrough device's interrupt watcher (INTx resampling, masked MSI/MSI-X vectors)
  PeerDma,     // maps a device's BARs into the IOMMU in the background
  GuestRam,    // allocates guest RAM and pins it for DMA while the guest starts (and its workers)
  Console,     // the guest's serial input from the terminal
  Signals,     // SIGINT/SIGTERM/SIGHUP/SIGUSR2
  Api,         // the API server's listener and request threads
};
inline constexpr ThreadClass kThreadClasses[] = {ThreadClass::Control, ThreadClass::Vcpu,    ThreadClass::Interrupts,
                                                  ThreadClass::PeerDma, ThreadClass::GuestRam, ThreadClass::Console,
                                                  ThreadClass::Signals, ThreadClass::Api};

// Exit status of a process killed by its own filter.
inline constexpr int kExitSeccomp = 6;

const char* class_name(ThreadClass c);
// "kill"/"on"/"true", "log", "off"/"false"; nullopt for anything else.
std::optional<SeccompMode> parse_mode(std::string_view text);

// The ids a privilege drop (confine/privileges.h) will switch to. glibc changes ids on every thread
// (it signals each to make the same call), so a thread confined before the drop must be allowed to
// make exactly that call, and nothing else of its kind.
struct DropTarget {
  uint32_t uid = 0, gid = 0;
  uint32_t groups = 0;  // how many supplementary groups
};

// Once, before other threads start (see above). Throws std::logic_error when a built-in program
// does not match the code (seccomp_programs.h); in Off mode it prepares nothing.
void configure(SeccompMode mode, std::optional<DropTarget> drop = std::nullopt);
SeccompMode mode();

// In the calling thread: name it (`name`, cut to 15 bytes; empty: the class's name) and, unless the
// mode is Off, install its class's filter. Throws std::runtime_error if the kernel refuses it.
void enter(ThreadClass c, std::string_view name = {});

// The name a SIGSYS message gives the calling thread, for threads that inherit a filter without
// entering a class themselves (httplib's request threads). No system call.
void label_thread(std::string_view name);

// The allow lists (tests check them against what the lab recorded).
struct Ioctl {
  const char* name;
  unsigned long request;
};
std::vector<std::string> allowed_syscalls(ThreadClass c);
std::vector<Ioctl> allowed_ioctls(ThreadClass c);

// A crash (SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL) on any thread runs before_dying (async-signal-safe:
// the terminal put back) and then ends the process by that signal, with its core dump. The handler makes
// no system call a confined thread may not (a plain signal() inside it would be rt_sigaction, which
// only the control thread may make: the crash would be reported as a forbidden call). Call it once,
// from a thread that may change signal dispositions.
void die_of_crashes(void (*before_dying)());

// For the lab's check that a violation kills passvm and frees its devices: when
// PASSVM_TEST_FORBIDDEN_SYSCALL is set in the environment at configure(), request_test_violation()
// (passvm calls it on SIGUSR2) makes the next vCPU exit call make_forbidden_call(), a system call
// no class allows (socket). Otherwise both do nothing and take_test_violation() is one relaxed load.
void request_test_violation();
bool take_test_violation();
void make_forbidden_call();

}  // namespace passvm::confine
