#!/usr/bin/env python3
"""Run one VMM that boots the lab's L2 guest, and report what happened.

Usage: run_l2.py NAME [--timeout S] [--grace S] [--type TEXT] [--devices-as-left] [--start-figures]
                  [--expect-reset | --expect-exit STATUS] -- CMD...

The VMM's console (L2's ttyS0) is streamed to our stdout with a "[NAME] " prefix (so
it lands in L1's serial log) and saved to $LAB_OUT/NAME.console with timestamps.
Every "L2RESULT {json}" line becomes a "LABRESULT" check named NAME.<check>; a final
NAME.vmm check carries the measurements: wall time, time from VMM start to L2's init,
peak RSS of the VMM process tree. Checks asked for with lab.checks= on the command line
that never reported are failures with the reason and the last console lines.
A summary (figures per check) is written to $LAB_OUT/NAME.summary.json.
With --type, TEXT (a line; \n is added) is written to the VMM's stdin, that is typed on
L2's console, when L2 prints "L2CONSOLE ready" (the L2 check "console" does).
The console file is written line by line as L2 prints, and the VMM's PID is in $LAB_OUT/NAME.pid
while it runs, so that a scenario running this in the background can follow L2 and drive the VMM
(hot-plug through an API). An L2 that reports "hold" has finished its checks and waits to be stopped
from outside: the run is complete when the VMM then exits, and --grace does not apply.
Before the VMM starts, every idle e1000e on vfio-pci is put in its reset state (see
e1000e_handover); --devices-as-left leaves it as the previous VMM left it, to test a VMM's own
defence.
With --start-figures (for VMMs given lab.mem_mb=), NAME.vmm also says when, in ms after the VMM
started, its start-up steps happened, observed from outside the same way for every VMM: guest RAM
resident (VmRSS reaches 95% of guest RAM), pinned for DMA (VmLck, which VFIO type1 charges for the
pages it pins, first above zero, then at 95%; sampled every 25 ms), and the guest's first instruction
(L1's first kvm:kvm_entry event in one of the VMM's threads, with ftrace; see FirstEntryTrace).
A guest vCPU's triple fault is located with L1's trace (ShutdownTrace): the run's output and
NAME.vmm's figures (l2_triple_faults) give its RIP and the kernel function there. With --expect-reset
the guest is meant to reset before init: NAME.vmm passes when it did and the VMM then exited by itself
with a reset's status, and the run is not retried. With --expect-exit STATUS the guest is meant to stop
after init without finishing its checks (the L2 check "panic"): NAME.vmm passes when the VMM then exited
by itself with STATUS.
Exit status 0 only if every check passed.
"""
import ctypes
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import deque

import kallsyms  # this directory's kallsyms.py

DEFAULT_TIMEOUT = 480
DEFAULT_GRACE = 10


# Resolved here, not in the child: importing ctypes after the fork added 4 ms to every VMM's start in L1
# (spawning /bin/true: 40.6 ms with the import in the child, 36.7 without, medians of 15).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent():
    """Child setup: get SIGKILL if we die, even by SIGKILL, so no QEMU outlives us."""
    PR_SET_PDEATHSIG = 1
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)


def emit(scenario, check, passed, figures=None, detail=""):
    line = json.dumps({"scenario": scenario, "check": check, "pass": bool(passed),
                       "figures": figures or {}, "detail": detail}, separators=(",", ":"))
    print("LABRESULT " + line, flush=True)


def proc_tree(root):
    """PIDs of root and all its descendants, from each thread's children file (one small read per
    thread, where a scan of /proc reads every process's stat: 15-25 ms under TCG for each sample)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except (OSError, ValueError):
                continue
    return out


def status_kb(pid, fields):
    """Values in kB of /proc/PID/status lines (VmHWM, VmRSS, VmLck...); missing ones are 0."""
    out = dict.fromkeys(fields, 0)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in out:
                    out[key] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return out


def vm_hwm_kb(pid):
    return status_kb(pid, ("VmHWM",))["VmHWM"]


SMAPS_RE = re.compile(rb"^([0-9a-f]+)-([0-9a-f]+) |^Rss:\s+(\d+)", re.M)


def private_rss_kb(pid):
    """Resident memory outside guest RAM: the Rss of every mapping but the largest, when that
    one is at least 64 MiB (a VMM's guest RAM, whatever backs it)."""
    try:
        with open(f"/proc/{pid}/smaps", "rb") as f:
            text = f.read()
    except OSError:
        return 0
    sizes = []  # (mapping size, rss kB); one regex pass, not a Python step per line (a third of the CPU)
    for start, end, rss in SMAPS_RE.findall(text):
        if start:
            sizes.append([int(end, 16) - int(start, 16), 0])
        elif sizes:
            sizes[-1][1] = int(rss)
    if not sizes:
        return 0
    biggest = max(sizes)
    return sum(rss for _, rss in sizes) - (biggest[1] if biggest[0] >= 64 << 20 else 0)


class RssSampler(threading.Thread):
    """Peak resident set of the VMM: the largest VmHWM seen in its process tree (the kernel's own peak,
    which the exit status's rusage gives exactly for the VMM itself), and the largest resident set
    outside guest RAM, once a second. The sampler shares L1's CPU with the VMM it measures, so it must
    cost little and about the same for every VMM: a walk of /proc/PID/smaps takes 13 ms of CPU under TCG
    for passvm and 24 ms for QEMU (whose smaps is three times as long); taken every 0.2 s, with a scan
    of /proc and a Python step per line, it took a quarter of L1's CPU during QEMU's boots and a seventh
    during passvm's."""

    PERIOD = 1.0

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.private_kb, self.stop = pid, 0, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            tree = proc_tree(self.pid)
            for p in tree:
                self.peak_kb = max(self.peak_kb, vm_hwm_kb(p))
            self.private_kb = max(self.private_kb, sum(private_rss_kb(p) for p in tree))
            self.stop.wait(self.PERIOD)


class StartSampler(threading.Thread):
    """When the VMM's guest RAM became resident and pinned: the first sample (every 25 ms) in which its
    VmRSS reached 95% of guest RAM, and in which its VmLck (mm->locked_vm, which VFIO type1 raises by the
    pages it pins) was above zero and reached 95%. Times in ms after `start` (time.monotonic() when the VMM was started)."""

    PERIOD = 0.025

    def __init__(self, pid, start, guest_kb):
        super().__init__(daemon=True)
        self.pid, self.start_at, self.guest_kb, self.stop = pid, start, guest_kb, threading.Event()
        self.times = {"ram_resident_ms": None, "ram_pin_start_ms": None, "ram_pinned_ms": None}
        self.peak_lck_kb, self.tids = 0, {}  # thread ID: name

    def threads(self):
        try:
            for t in os.listdir(f"/proc/{self.pid}/task"):
                if int(t) not in self.tids:
                    with open(f"/proc/{self.pid}/task/{t}/comm") as f:
                        self.tids[int(t)] = f.read().strip()
        except (OSError, ValueError):
            pass

    def run(self):
        full = self.guest_kb * 95 // 100
        while not self.stop.is_set() and None in self.times.values():
            self.threads()
            v = status_kb(self.pid, ("VmRSS", "VmLck"))
            ms = int((time.monotonic() - self.start_at) * 1000)
            self.peak_lck_kb = max(self.peak_lck_kb, v["VmLck"])
            for key, reached in (("ram_resident_ms", v["VmRSS"] >= full), ("ram_pin_start_ms", v["VmLck"] > 0),
                                 ("ram_pinned_ms", v["VmLck"] >= full)):
                if reached and self.times[key] is None:
                    self.times[key] = ms
            self.stop.wait(self.PERIOD)
        while not self.stop.is_set():  # the most ever pinned, for the record
            self.threads()
            self.peak_lck_kb = max(self.peak_lck_kb, status_kb(self.pid, ("VmLck",))["VmLck"])
            self.stop.wait(0.5)


TRACEFS = "/sys/kernel/tracing"
# One event of an ftrace text buffer: "  comm-tid  [cpu] flags  seconds: event: fields". The comm may hold
# spaces and dashes (the tid is the last dash's number); "<...>" when the comm was not recorded.
TRACE_LINE = re.compile(r"^\s*(.*)-(\d+)\s+\[\d+\][^:]*?\s(\d+\.\d+): (\w+): ?(.*)$")


def trace_events(text, names):
    """The events of ftrace text `text` whose name is in `names`, in order, as (tid, seconds, name, fields)."""
    for line in text.splitlines():
        m = TRACE_LINE.match(line)
        if m and m.group(4) in names:
            yield int(m.group(2)), float(m.group(3)), m.group(4), m.group(5).strip()


class FirstEntryTrace:
    """The guest's first instruction: L1's first kvm:kvm_entry event in a thread of the VMM, with
    CLOCK_MONOTONIC timestamps (trace_clock mono, time.monotonic()'s clock); with options/overwrite off
    a full buffer drops the newest events, so the first entries stay. Enabling and disabling events and
    PID filters patch kernel text, and under L0's multi-threaded TCG a CPU that meets a patch in
    progress in the scheduler (the sched_switch probes of set_event_pid, and of options/record-cmd,
    which enabling any event turns on) can spin on it while the patching CPU waits for it, and L1
    hangs. So nothing patches the scheduler: no PID filter, record-cmd off (thread names come from
    /proc), and the event, whose own call sites run only while a guest does, is enabled once per L1
    boot before any guest runs and never disabled. Between runs only the ring buffer is switched and
    cleared; the VMM's threads are told apart by their IDs, which the caller collects as it runs."""

    def __init__(self):
        self.error = None
        try:
            if not os.path.exists(f"{TRACEFS}/trace"):
                subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True, capture_output=True)
            self.write("tracing_on", "0")
            self.write("trace_clock", "mono")
            self.write("buffer_size_kb", "1024")
            self.write("options/overwrite", "0")
            self.write("options/record-cmd", "0")
            self.write("trace", "")
            with open(f"{TRACEFS}/events/kvm/kvm_entry/enable") as f:
                if f.read().strip() != "1":
                    self.write("events/kvm/kvm_entry/enable", "1")
            self.write("tracing_on", "1")
        except (OSError, subprocess.CalledProcessError) as e:
            self.error = f"ftrace in L1 unusable ({e}): is tracefs ({TRACEFS}) there and kvm loaded?"

    @staticmethod
    def write(name, value):
        with open(f"{TRACEFS}/{name}", "w") as f:
            f.write(value + "\n")

    def first_entry(self, start, tids):
        """ms after `start` of the first kvm_entry in one of the threads `tids` (ID: name), and that thread."""
        if self.error is not None:
            return None, self.error
        try:
            self.write("tracing_on", "0")
            with open(f"{TRACEFS}/trace") as f:
                text = f.read()
            self.write("trace", "")
        except OSError as e:
            return None, f"reading {TRACEFS}/trace: {e}"
        entries, others = [], set()  # (time, "thread name (tid)"); the name is <...> without record-cmd
        for tid, t, _, _ in trace_events(text, {"kvm_entry"}):
            if tid in tids:
                entries.append((t, f"{tids[tid]} ({tid})"))
            else:
                others.add(str(tid))
        if not entries:
            return None, ("no kvm:kvm_entry event of the VMM's threads in L1's trace"
                          + (f" (only of threads {', '.join(sorted(others))})" if others else ""))
        t, thread = min(entries)
        return round((t - start) * 1000, 1), thread


class ShutdownTrace:
    """Where L2's vCPUs triple-faulted: the exits L1's KVM took for it (SVM's shutdown intercept, VMX's
    triple fault), kept by the tracefs instance stage2.sh sets up before any guest runs, with the guest's
    RIP at the fault, named with L1's kallsyms (L1 and L2 boot the same kernel with nokaslr). Only read
    and cleared here: nothing is enabled between runs (FirstEntryTrace says why)."""
    DIR = f"{TRACEFS}/instances/lab-shutdown"
    EXIT = re.compile(r"vcpu (\d+) reason (\S+) rip 0x([0-9a-f]+)")

    def __init__(self):
        self.symbols = None

    def symbolize(self, addr):
        if self.symbols is None:
            self.symbols = kallsyms.symbolizer("/proc/kallsyms")
        return self.symbols(addr)

    def collect(self, since):
        """The faults after `since` (time.monotonic()), as dicts; the instance is emptied. None when the
        instance is not there (its setup in stage2.sh failed: L1's serial log says why)."""
        try:
            with open(f"{self.DIR}/trace") as f:
                text = f.read()
            with open(f"{self.DIR}/trace", "w") as f:
                f.write("\n")
        except OSError:
            return None
        out = []
        for _, t, _, fields in trace_events(text, {"kvm_exit"}):
            m = self.EXIT.match(fields)
            if m and t >= since:
                rip = int(m.group(3), 16)
                out.append({"vcpu": int(m.group(1)), "exit": m.group(2), "rip": f"{rip:#x}",
                            "symbol": self.symbolize(rip)})
        return out

    @staticmethod
    def describe(faults):
        return "; ".join(f"L1's KVM saw vCPU {f['vcpu']} triple-fault ({f['exit']} exit) at rip {f['rip']}"
                         f"{' (' + f['symbol'] + ')' if f['symbol'] else ''}" for f in faults)


SHUTDOWNS = ShutdownTrace()


BDF_RE = re.compile(r"\b([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])\b")
VFIO_MSIX_RE = re.compile(r"vfio-msix\[\d+\]\(([0-9a-f:.]+)\)")


class L1IrqSampler(threading.Thread):
    """The host side of the VMM's MSI-X: how many vectors vfio-pci has requested for each device in
    L1 (lines 'vfio-msix[N](BDF)' of /proc/interrupts), the largest number seen during the run."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = {}, threading.Event()

    def sample(self):
        now = {}
        try:
            with open("/proc/interrupts") as f:
                for line in f:
                    for bdf in VFIO_MSIX_RE.findall(line):
                        now[bdf] = now.get(bdf, 0) + 1
        except OSError:
            return
        for bdf, n in now.items():
            self.peak[bdf] = max(self.peak.get(bdf, 0), n)

    def run(self):
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(0.3)


DEBUGFS = "/sys/kernel/debug"


def kvm_stats(pids):
    """L1 KVM's counters for the VMs of these processes (debugfs: one directory per VM, named PID-FD,
    whose files sum the VM's vCPUs' counters): {name: value}, summed over the VMs."""
    out = {}
    try:
        dirs = [d for d in os.listdir(f"{DEBUGFS}/kvm") if d.split("-")[0] in {str(p) for p in pids}]
    except OSError:
        return out
    for d in dirs:
        for name in os.listdir(f"{DEBUGFS}/kvm/{d}"):
            try:
                with open(f"{DEBUGFS}/kvm/{d}/{name}") as f:
                    out[name] = out.get(name, 0) + int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a vCPU directory, or a file that is not a counter
    return out


def threads_now(pids):
    """{tid: (process and thread name, state, CPU ticks, wchan, kernel stack)} for every thread of pids."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            base = f"/proc/{pid}/task/{tid}"
            try:
                with open(f"{base}/stat") as f:
                    stat = f.read()
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2:].split()
                with open(f"{base}/wchan") as f:
                    wchan = f.read().strip()
                try:
                    with open(f"{base}/stack") as f:
                        stack = [l.split()[-1] for l in f.read().splitlines()[:8]]
                except OSError:
                    stack = []
                out[tid] = (comm, fields[0], int(fields[11]) + int(fields[12]), wchan, stack)
            except (OSError, ValueError, IndexError):
                continue
    return out


def vfio_interrupts():
    """L1's /proc/interrupts lines of vfio's vectors, spaces squeezed."""
    try:
        with open("/proc/interrupts") as f:
            return [" ".join(l.split()) for l in f if "vfio" in l]
    except OSError:
        return []


EMULATE_DIR = f"{TRACEFS}/instances/lab-emulate"
EMULATE_INSN = re.compile(r"^[0-9a-f]+:([0-9a-f]+):([0-9a-f ]*)(.*)$")


def emulation_report(since, tids=None, last=6):
    """What L1's KVM emulated for guests and injected into them after `since` (time.monotonic()), from
    the lab-emulate instance stage2.sh enables before any guest runs: each instruction (rip, named with
    L1's kallsyms, L1 and L2 boot one kernel with nokaslr, and its bytes) and each exception with how
    often it came, most frequent first, then the last events in order. A guest looping on one
    instruction shows as one rip and one exception counted the same. Only the threads `tids` (the VMM's),
    when given. Lines of text, [] when nothing."""
    try:
        with open(f"{EMULATE_DIR}/trace") as f:
            text = f.read()
    except OSError as e:
        return [f"  L1 KVM emulation trace unreadable ({e}): L1's serial log says why"]
    counts, tail = {}, []
    for tid, t, event, what in trace_events(text, {"kvm_emulate_insn", "kvm_inj_exception"}):
        if t < since or (tids is not None and tid not in tids):
            continue
        if event == "kvm_emulate_insn":
            i = EMULATE_INSN.match(what)
            if i:
                rip = int(i.group(1), 16)
                symbol = SHUTDOWNS.symbolize(rip)
                what = f"rip {rip:#x}{' (' + symbol + ')' if symbol else ''} bytes {i.group(2).strip()} {i.group(3).strip()}"
            what = f"emulated {what}"
        else:
            what = f"injected {what}"
        counts[what] = counts.get(what, 0) + 1
        tail.append(f"{t:.6f} {what}")
    if not counts:
        return []
    top = sorted(counts.items(), key=lambda c: -c[1])[:5]
    return (["  L1 KVM emulation trace (the ring keeps the last few thousand events), most frequent first:"]
            + [f"    {n} x {w}" for w, n in top] + [f"  last: {t}" for t in tail[-last:]])


def stuck_report(pid, seconds=2.0):
    """What a VMM that is about to be killed for a timeout was doing: each thread's state, the CPU it
    used over `seconds`, where it waits in L1's kernel (a vCPU halted in kvm_vcpu_halt, or running the
    guest in the vendor's vcpu_run), and what L1's KVM counted meanwhile for its VMs (exits by kind,
    interrupts injected, halts and wake-ups), and the instructions it emulated for them (emulation_report).
    Nothing is enabled here: enabling events patches kernel text, which can hang L1 under TCG
    (FirstEntryTrace). Returns the text, for NAME.stuck next to the console."""
    if not os.path.isdir(f"{DEBUGFS}/kvm"):
        subprocess.run(["mount", "-t", "debugfs", "nodev", DEBUGFS], capture_output=True)
    pids = proc_tree(pid)
    hz = os.sysconf("SC_CLK_TCK")
    stats0, threads0 = kvm_stats(pids), threads_now(pids)
    time.sleep(seconds)
    stats1, threads1 = kvm_stats(pids), threads_now(pids)
    lines = [f"over {seconds:g} s before the kill:"]
    for tid, (comm, state, ticks, wchan, stack) in sorted(threads1.items(), key=lambda t: int(t[0])):
        used = (ticks - threads0.get(tid, (0, 0, ticks))[2]) / hz / seconds
        lines.append(f"  thread {tid} {comm}: state {state}, {used:.0%} of a CPU, waits in {wchan or '-'}"
                     f"{'; stack ' + ' < '.join(stack) if stack else ''}")
    # Each passed-through device's interrupts as L1 took them (vfio's lines of /proc/interrupts): whether a
    # device still raised any while the guest waited.
    for line in vfio_interrupts():
        lines.append(f"  L1 /proc/interrupts: {line}")
    moved = {k: stats1[k] - stats0.get(k, 0) for k in sorted(stats1) if stats1[k] != stats0.get(k, 0)}
    lines.append("  L1 KVM counters that moved: " + (", ".join(f"{k} +{v}" for k, v in moved.items()) if moved else
                                                     "none" if stats1 else f"none readable (no {DEBUGFS}/kvm/{pid}-*)"))
    # What the guest did while it was watched, in the VMM's threads.
    lines += emulation_report(time.monotonic() - seconds - 1, {int(t) for t in threads1})
    return "\n".join(lines)


def msix_table_size(bdf):
    """Entries in the MSI-X table of an L1 device (its config space, capability 0x11), or None."""
    try:
        with open(f"/sys/bus/pci/devices/{bdf}/config", "rb") as f:
            cfg = f.read(256)
        ids = open(f"/sys/bus/pci/devices/{bdf}/vendor").read().strip()[2:] + ":" + \
            open(f"/sys/bus/pci/devices/{bdf}/device").read().strip()[2:]
    except OSError:
        return None, None
    if len(cfg) < 64 or not cfg[6] & 0x10:
        return None, ids
    at, seen = cfg[0x34] & 0xfc, 0
    while at and seen < 48 and at + 4 <= len(cfg):
        if cfg[at] == 0x11:
            return (int.from_bytes(cfg[at + 2:at + 4], "little") & 0x7ff) + 1, ids
        at, seen = cfg[at + 1] & 0xfc, seen + 1
    return None, ids


def guest_memory_mb(cmd):
    for arg in cmd:
        for word in arg.split():
            if word.startswith("lab.mem_mb="):
                try:
                    return int(word[len("lab.mem_mb="):])
                except ValueError:
                    return None
    return None


def requested_checks(cmd):
    for arg in cmd:
        for word in arg.split():
            if word.startswith("lab.checks="):
                return [c for c in word[len("lab.checks="):].split(",") if c]
    return []


def parse_args(argv):
    if "--" not in argv or argv.index("--") == 0:
        sys.exit("usage: run_l2 NAME [--timeout S] [--grace S] -- CMD...  (missing NAME or '--')")
    split = argv.index("--")
    opts, cmd = argv[:split], argv[split + 1:]
    name, timeout, grace, typed, as_left, start_figures = opts[0], DEFAULT_TIMEOUT, DEFAULT_GRACE, None, False, False
    expect_reset, expect_exit = False, None
    i = 1
    while i < len(opts):
        if opts[i] == "--expect-reset":
            expect_reset = True
            i += 1
        elif opts[i] == "--expect-exit" and i + 1 < len(opts):
            if not opts[i + 1].isdigit():
                sys.exit(f"run_l2: --expect-exit needs the VMM's exit status, got '{opts[i + 1]}'")
            expect_exit = int(opts[i + 1])
            i += 2
        elif opts[i] == "--devices-as-left":
            as_left = True
            i += 1
        elif opts[i] == "--start-figures":
            start_figures = True
            i += 1
        elif opts[i] == "--type" and i + 1 < len(opts):
            typed = opts[i + 1] + "\n"
            i += 2
        elif opts[i] in ("--timeout", "--grace") and i + 1 < len(opts):
            try:
                value = float(opts[i + 1])
            except ValueError:
                sys.exit(f"run_l2: {opts[i]} needs a number of seconds, got '{opts[i + 1]}'")
            if opts[i] == "--timeout":
                timeout = value
            else:
                grace = value
            i += 2
        else:
            sys.exit(f"run_l2: unknown option '{opts[i]}' (known: --timeout S, --grace S, --type TEXT, --devices-as-left, "
                     f"--start-figures, --expect-reset, --expect-exit STATUS)")
    if not cmd:
        sys.exit("run_l2: no VMM command after '--'")
    if start_figures and not guest_memory_mb(cmd):
        sys.exit("run_l2: --start-figures compares the VMM's memory with guest RAM: give L2 lab.mem_mb=MiB "
                 "(l2_append CHECKS lab.mem_mb=N)")
    if expect_reset and expect_exit is not None:
        sys.exit("run_l2: give --expect-reset or --expect-exit, not both")
    return name, timeout, grace, typed, as_left, start_figures, expect_reset, expect_exit, cmd


def console_lines(pipe):
    """The VMM's output, line by line. QEMU writes its console a byte at a time, and a reader woken for
    every byte took 5.6 s of L1's one CPU from a 35 s QEMU boot without quiet, against 0.8 s from passvm's
    7.5 s (boot-profile's NAME.cpu): the harness must not weigh on one VMM more than on the other. So the
    reading thread runs as SCHED_BATCH: a write still makes it runnable, but it no longer preempts the
    VMM's thread that wrote; it reads what has gathered when that thread blocks or at L1's next tick
    (4 ms): 9-13% of either VMM's window. It has no timer of its own (a 20 ms pause between reads did as
    well for the shares, but made every line up to 20 ms late)."""
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # this thread only; the VMM is already running
    try:
        fd, pending = pipe.fileno(), b""
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            yield from lines
        if pending:
            yield pending
    finally:  # what this thread starts later gets the normal policy
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def run_vmm(name, cmd, timeout, grace, typed, console, pid_path, start_figures):
    """One run of the VMM: stream its console, collect L2's results, sample its memory."""
    trace = FirstEntryTrace() if start_figures else None

    if os.environ.get("RUN_L2_TRACE_MARK") == "1":  # boot-profile: where in L1's trace the VMM started
        try:
            with open(f"{TRACEFS}/trace_marker", "w") as f:
                f.write(f"lab: {name} starts\n")
        except OSError as e:
            print(f"[{name}] no trace marker: {e}", flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if typed else subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_parent)
    with open(pid_path, "w") as f:
        f.write(f"{proc.pid}\n")
    starts = StartSampler(proc.pid, start, (guest_memory_mb(cmd) or 0) * 1024) if start_figures else None
    if starts:
        starts.start()
    sampler = RssSampler(proc.pid)
    sampler.start()
    irqs = L1IrqSampler()
    irqs.start()

    state = {"init_ms": None, "nvme_ms": None, "done_at": None, "held_at": None, "killed": None, "exit_after_done_ms": None,
             "stuck": None}
    # Long enough to hold the guest's last words above passvm's exit report (--stats: some 25 lines).
    results, tail = {}, deque(maxlen=60)

    def kill(reason):
        if state["killed"] is None:
            state["killed"] = reason
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def watchdog():
        while proc.poll() is None:
            now = time.monotonic()
            if now - start > timeout:
                if os.path.basename(cmd[0]) == "passvm":
                    # passvm prints its counters and its devices' state (the UART's registers and interrupt
                    # line among them) on SIGUSR2: on the console, before the kill.
                    try:
                        os.kill(proc.pid, signal.SIGUSR2)
                    except ProcessLookupError:
                        pass
                try:
                    state["stuck"] = stuck_report(proc.pid)
                except Exception as e:  # the report is evidence, not the verdict: the kill goes on
                    state["stuck"] = f"no report: {e!r}"
                kill(f"timed out after {timeout:.0f} s")
            elif state["done_at"] is not None and now - state["done_at"] > grace:
                kill(f"L2 finished but the VMM did not exit within {grace:.0f} s")
            time.sleep(0.2)

    threading.Thread(target=watchdog, daemon=True).start()
    for raw in console_lines(proc.stdout):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        ms = int((time.monotonic() - start) * 1000)
        console.write(f"{ms:8d} {line}\n")
        console.flush()  # a scenario may follow it while the VMM runs
        print(f"[{name}] {line}", flush=True)
        tail.append(line)
        if typed and "L2CONSOLE ready" in line:
            try:  # keystrokes on L2's console, through the VMM's UART
                proc.stdin.write(typed.encode())
                proc.stdin.flush()
            except OSError:
                pass
            typed = None
        idx = line.find("L2RESULT ")
        if idx < 0:
            continue
        try:
            # raw_decode: a kernel message may follow the result on its line (the console driver writes
            # between the tty's characters, here before the line's end); the JSON before it is whole.
            r, _ = json.JSONDecoder().raw_decode(line[idx + len("L2RESULT "):])
            check = str(r["check"])
        except (ValueError, KeyError, TypeError):
            continue  # a console line split inside the result by kernel output: the check will show as missing
        if check == "boot" and state["init_ms"] is None:
            state["init_ms"] = ms
        if check == "nvme" and state["nvme_ms"] is None:
            state["nvme_ms"] = ms  # the passed-through NVMe did its first I/O in the guest
        if check == "done":
            state["done_at"] = time.monotonic()
            continue
        if check == "hold" and state["held_at"] is None:
            state["held_at"] = time.monotonic()
        results[check] = r
    rc = proc.wait()
    try:
        os.unlink(pid_path)
    except OSError:
        pass
    exited_at = time.monotonic()
    if state["done_at"] is not None and state["killed"] is None:
        # L2 powers off right after its last result: this is the VMM's own stop and teardown.
        state["exit_after_done_ms"] = int((exited_at - state["done_at"]) * 1000)
    for t in (sampler, irqs) + ((starts,) if starts else ()):
        t.stop.set()
        t.join()
    faults = SHUTDOWNS.collect(start)
    if faults:
        print(f"[{name}] run_l2: {ShutdownTrace.describe(faults)}", flush=True)
    start_fig = {}
    if start_figures:
        entry_ms, about = trace.first_entry(start, starts.tids)
        start_fig = dict(starts.times, first_guest_entry_ms=entry_ms, peak_vmlck_kb=starts.peak_lck_kb)
        start_fig["first_guest_entry_thread" if entry_ms is not None else "first_guest_entry_error"] = about
    return {"rc": rc, "wall_ms": int((time.monotonic() - start) * 1000), "results": results, "tail": tail,
            "sampler": sampler, "l1_msix": irqs.peak, "start_figures": start_fig, "faults": faults, **state}


E1000E_QUEUES = (0x2800, 0x2900, 0x3800, 0x3900)  # receive queues 0 and 1, transmit queues 0 and 1
RCTL, TCTL, IMC, CTRL = 0x100, 0x400, 0xd8, 0x0


def e1000e_handover(quiesce):
    """QEMU 7.2's emulated e1000e has no working reset: vfio-pci's PM reset does nothing, and its
    CTRL.RST only reloads the MAC address (QEMU 8.0 made it a full reset). So from one VMM run to the
    next the NIC keeps its receive and transmit units on, with rings at the previous guest's addresses,
    and the moment the next guest turns bus mastering on it writes L1's packets wherever those stale
    descriptors say. A real NIC is reset between owners; the lab does for this one what its reset
    should: receive and transmit off, interrupts masked, ring registers cleared. With quiesce False it
    only reports, so that a VMM's own defence can be tested against the device as it was left.
    Returns one line per idle e1000e on vfio-pci: what was found, and what was done."""
    import glob
    import mmap
    import struct
    out = []
    for dev in sorted(glob.glob("/sys/bus/pci/devices/*")):
        try:
            ids = [open(f"{dev}/{f}").read().strip() for f in ("vendor", "device")]
            driver = os.path.basename(os.readlink(f"{dev}/driver")) if os.path.exists(f"{dev}/driver") else ""
            if ids != ["0x8086", "0x10d3"] or driver != "vfio-pci":
                continue
            with open(f"{dev}/config", "r+b") as cfg:
                cfg.seek(4)
                command = struct.unpack("<H", cfg.read(2))[0]
                cfg.seek(4)
                cfg.write(struct.pack("<H", (command | 0x2) & ~0x4))  # memory decode on, no DMA meanwhile
                cfg.flush()
                with open(f"{dev}/resource0", "r+b") as bar:
                    regs = mmap.mmap(bar.fileno(), 0x4000)
                    rd = lambda off: struct.unpack_from("<I", regs, off)[0]
                    wr = lambda off, v: struct.pack_into("<I", regs, off, v)
                    rctl, tctl = rd(RCTL), rd(TCTL)
                    ring = (rd(0x2804) << 32) | rd(0x2800)
                    found = (f"RCTL {rctl:#x} TCTL {tctl:#x} rx ring {ring:#x} len {rd(0x2808)} "
                             f"head {rd(0x2810)} tail {rd(0x2818)}")
                    if quiesce:
                        wr(IMC, 0xffffffff)
                        wr(RCTL, 0)
                        wr(TCTL, 0)
                        wr(CTRL, rd(CTRL) | (1 << 26))
                        for q in E1000E_QUEUES:
                            for off in (0x0, 0x4, 0x8, 0x10, 0x18):  # base low/high, length, head, tail
                                wr(q + off, 0)
                        wr(IMC, 0xffffffff)
                    regs.close()
                cfg.seek(4)
                cfg.write(struct.pack("<H", command))
            out.append(f"{os.path.basename(dev)} {'quiesced' if quiesce else 'left as it was'}: {found}")
        except (OSError, ValueError) as e:
            out.append(f"{os.path.basename(dev)}: {e}")
    return out


def last_words(tail):
    """What the guest printed last and what the VMM said of its end, apart: passvm's exit report
    (its step times and --stats' counters, after its message saying how the guest stopped) would
    otherwise push the guest's last lines (a panic's, say: the lab's L2 boots with panic=-1, so a
    panic resets it at once) out of any few last lines."""
    lines = [l.rstrip() for l in tail if l.strip()]
    vmm = [l for l in lines if l.startswith("passvm:")]
    said = [l for l in vmm if not re.match(r"passvm:\s+[0-9.]+ ms\s", l) and not l.startswith("passvm:   ")]
    guest = [l for l in lines if not l.startswith("passvm:") and not l.startswith("  ")]
    return (f"guest's last console lines: {' | '.join(guest[-12:])[-1500:] or '(none)'}"
            + (f"; passvm said: {' | '.join(said[-3:])[-600:]}" if said else ""))


def main():
    name, timeout, grace, typed, as_left, start_figures, expect_reset, expect_exit, cmd = parse_args(sys.argv[1:])
    for line in e1000e_handover(quiesce=not as_left):
        print(f"[{name}] e1000e at hand-over: {line}", flush=True)
    scenario = os.environ.get("LAB_SCENARIO", "?")
    out_dir = os.environ.get("LAB_OUT", "/tmp")
    os.makedirs(out_dir, exist_ok=True)
    console_path = os.path.join(out_dir, f"{name}.console")
    wanted = requested_checks(cmd)

    retried = ""
    with open(console_path, "w", errors="replace") as console:
        for attempt in (1, 2):
            print(f"[{name}] $ {' '.join(cmd)}", flush=True)
            try:
                run = run_vmm(name, cmd, timeout, grace, typed, console, os.path.join(out_dir, f"{name}.pid"),
                              start_figures)
            except OSError as e:
                emit(scenario, f"{name}.vmm", False, {}, f"cannot start the VMM '{cmd[0]}': {e.strerror}")
                return 1
            # Nested guests on TCG sometimes reset while the kernel is still starting, under QEMU and
            # passvm alike. Such a run (L2 never reached init and the VMM exited by itself with the status
            # of a guest reset: 0 for QEMU's -no-reboot, 2 or 3 for passvm) gets one more try, and the
            # figures say so; anything else, and a second early reset, stands.
            reset_early = run["init_ms"] is None and run["killed"] is None and run["rc"] in (0, 2, 3)
            if attempt == 2 or not reset_early or expect_reset:
                break
            where = f"; {ShutdownTrace.describe(run['faults'])}" if run["faults"] else ""
            retried = f"exit status {run['rc']} before L2's init{where}; {last_words(run['tail'])}"
            print(f"[{name}] run_l2: L2 reset before init (VMM exit status {run['rc']}); running it once more",
                  flush=True)
    rc, wall_ms, results, tail, state, sampler = run["rc"], run["wall_ms"], run["results"], run["tail"], run, run["sampler"]
    # Exact for the processes we (or the VMM) waited for; sampling covers the rest.
    peak_kb = max(sampler.peak_kb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)

    ok = True
    for check, r in results.items():
        passed = bool(r.get("pass"))
        ok &= passed
        emit(scenario, f"{name}.{check}", passed, r.get("figures", {}), str(r.get("detail", "")))

    last = " | ".join(l for l in tail if l.strip())[-900:]
    if state["stuck"]:
        # Kept beside the console (lab/run keeps LAB_OUT with --keep-logs, and for failed runs).
        with open(os.path.join(out_dir, f"{name}.stuck"), "w") as f:
            f.write(state["stuck"] + "\n")
        print(f"[{name}] run_l2: the VMM timed out; what it was doing:\n{state['stuck']}", flush=True)
        last = f"{last} (what the VMM was doing: {name}.stuck)"
    if run["faults"]:
        last = f"{ShutdownTrace.describe(run['faults'])}; {last}"
    if expect_exit is not None:
        # A guest made to stop after init (a panic): the VMM must stop by itself, with the status asked for.
        reason = ("" if state["init_ms"] is not None and state["done_at"] is None and state["killed"] is None
                  and rc == expect_exit else
                  f"expected the guest to stop after init without finishing and the VMM to exit by itself with "
                  f"status {expect_exit}; {state['killed'] or f'it exited with status {rc}'}"
                  f"{'' if state['init_ms'] is not None else ' before L2 reached init'}"
                  f"{' after L2 finished its checks' if state['done_at'] is not None else ''}; "
                  f"last console lines: {last}")
    elif expect_reset:
        # A guest made to reset: the VMM must stop by itself with a reset's status, before init.
        reason = ("" if state["init_ms"] is None and state["killed"] is None and rc in (0, 2, 3) else
                  f"expected the guest to reset before init and the VMM to exit by itself with a reset's status; "
                  f"{state['killed'] or f'it exited with status {rc}'}"
                  f"{' after L2 reached init' if state['init_ms'] is not None else ''}; last console lines: {last}")
    elif state["init_ms"] is None:
        why = state["killed"] or f"the VMM exited with status {rc}"
        reason = f"L2 never reached init ({why}); last console lines: {last}"
    elif state["done_at"] is None and state["held_at"] is None:
        why = state["killed"] or f"the VMM exited with status {rc}"
        reason = f"L2 reached init but did not finish its checks ({why}); last console lines: {last}"
    elif state["done_at"] is None and state["killed"]:
        reason = f"L2 finished its checks and held, but nothing stopped the VMM ({state['killed']}); last console lines: {last}"
    else:
        reason = ""
    for check in wanted:
        if check not in results:
            ok = False
            emit(scenario, f"{name}.{check}", False, {},
                 reason or f"L2 never reported check '{check}'; last console lines: {last}")

    boot = results.get("boot", {}).get("figures", {})
    figures = {"wall_ms": wall_ms, "vmm_start_to_l2_init_ms": state["init_ms"],
               "vmm_start_to_l2_nvme_ms": state["nvme_ms"],
               "l2_uptime_at_init_s": boot.get("uptime_s"),
               "peak_rss_kb": peak_kb, "peak_private_rss_kb": sampler.private_kb, "exit_code": rc,
               "exited_by_itself": state["killed"] is None, "exit_after_done_ms": state["exit_after_done_ms"],
               "console": console_path}
    if retried:
        figures["first_run_reset_early"] = retried
    if run["faults"]:
        figures["l2_triple_faults"] = run["faults"]
    # Per device passed through: its vendor:device, MSI-X table size, and the most MSI-X vectors L1 gave it.
    msix = {}
    for bdf in sorted({b for arg in cmd for b in BDF_RE.findall(arg)}):
        table, ids = msix_table_size(bdf)
        if table:
            msix[bdf] = {"id": ids, "table": table, "host_vectors": run["l1_msix"].get(bdf, 0)}
    figures["l1_msix"] = msix
    figures.update(run["start_figures"])
    guest_mb = guest_memory_mb(cmd)
    if guest_mb:
        # VFIO pins all of guest RAM, so with a device passed through this is the VMM's own memory.
        figures["peak_rss_minus_guest_kb"] = peak_kb - guest_mb * 1024
    # A VMM that ran L2 to the end passes even if it had to be stopped afterwards
    # (a guest without a working power-off path); that is visible in exited_by_itself.
    emit(scenario, f"{name}.vmm", not reason, figures, reason or (state["killed"] or ""))
    ok &= not reason
    # For comparisons between VMM runs of the same scenario (lib.sh: l2_compare).
    with open(os.path.join(out_dir, f"{name}.summary.json"), "w") as f:
        json.dump({"vmm": figures, "pass": ok,
                   "checks": {c: r.get("figures", {}) for c, r in results.items()}}, f)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
