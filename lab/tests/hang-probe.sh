#!/usr/bin/env bash
# What lab/run does when L1 falls silent, run against a real L0 QEMU that is paused (-S: nothing runs, so
# nothing answers the kicks): the snapshot asks the monitor for registers, the local APIC and the IOAPIC,
# the kicks (an NMI, a key press) are commands the monitor accepts, and what the console said after a kick
# is counted. Then the interrupt watch: on the real monitor it presses no key, and on replayed APIC states
# it presses one only when two reads in a row find the same expired timer with its vector waiting. The hang
# path runs only when L1 really hangs; a mistake in it would surface just then.
set -uo pipefail
LAB=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'kill "$qpid" 2>/dev/null; rm -rf "$tmp"' EXIT
mkdir "$tmp/out"
qemu-system-x86_64 -S -accel tcg -M q35 -smp 2 -nodefaults -display none \
    -chardev "socket,id=l0mon,path=$tmp/l0mon.sock,server=on,wait=off" -mon chardev=l0mon,mode=readline &
qpid=$!
for _ in $(seq 50); do [ -S "$tmp/l0mon.sock" ] && break; sleep 0.1; done
python3 - "$LAB/run" "$tmp" "$qpid" <<'PY'
import importlib.machinery, importlib.util, queue, sys
loader = importlib.machinery.SourceFileLoader("labrun", sys.argv[1])
spec = importlib.util.spec_from_loader("labrun", loader)
lab = importlib.util.module_from_spec(spec)
loader.exec_module(lab)
tmp, pid = sys.argv[2], int(sys.argv[3])

class Proc:
    def __init__(self, pid):
        self.pid = pid

class Console:  # lab/run's Serial as the kicks use it: a queue of L1's lines
    def __init__(self, lines):
        self.lines = queue.Queue()
        for line in lines:
            self.lines.put(line)

failed = []
def check(what, ok):
    print(("ok: " if ok else "FAIL: ") + what)
    if not ok:
        failed.append(what)

first = lab.l0_snapshot(Proc(pid), tmp)
state = open(f"{tmp}/l0-state.txt").read()
check("the snapshot's first line is L0's CPU use", first.startswith(f"L0 QEMU (pid {pid}) used"))
check("four register samples", state.count("(qemu) info registers") == 4 and "IP=" in state)
check("the local APIC, twice (timer, IRR, ISR)",
      state.count("(qemu) info lapic") == 2 and "LVTT" in state and "IRR" in state and "ISR" in state)
check("the IOAPIC", "(qemu) info pic" in state and "ioapic" in state)

said = lab.kick_l1(Console([]), tmp, wait_s=1)
state = open(f"{tmp}/l0-state.txt").read()
check("no line after either kick of a paused L1: " + "; ".join(said),
      said == ["after nmi: 0 console lines in 1 s", "after key press: 0 console lines in 1 s"])
check("the monitor took both kicks", "--- after nmi ('(qemu) nmi')" in state
      and "--- after key press ('(qemu) sendkey shift')" in state and "unknown command" not in state)
said = lab.kick_l1(Console(["Uhhuh. NMI received for unknown reason 30 on CPU 0."]), tmp, wait_s=1)
check("a line after the NMI is counted and quoted: " + said[0],
      said[0].startswith("after nmi: 1 console lines in 1 s (Uhhuh. NMI received"))

# The interrupt watch. Its parse, on this QEMU's real APIC (nothing pending) and on the APIC of a kept
# hang (below: L1's one-shot timer expired, its vector 236 waiting in IRR, nothing in service, priority 0x10).
real = lab.l0_monitor(f"{tmp}/l0mon.sock", ["info lapic 0"])
check("a paused CPU's APIC has nothing undelivered and no expired timer waiting",
      "LVTT" in real and lab.undelivered_vectors(real) == [] and lab.expired_timer(real) is None)
hung = """LVTT\t 0x000000ec active-hi edge                 one-shot     Fixed  (vec 236)
Timer\t DCR=0x3 (divide by 16) initial_count = 134925 current_count = 0
SPIV\t 0x000001ff APIC enabled, focus=off, spurious vec 255
ESR\t 0x00000000
ISR\t (none)
IRR\t 236 

APR 0x00 TPR 0x10 DFR 0x0f LDR 0x01 PPR 0x10
"""
check("a kept hang's APIC: vector 236 undelivered, the timer's", lab.undelivered_vectors(hung) == [236]
      and lab.expired_timer(hung) == (236, 134925))
check("a vector in service: not stuck", lab.expired_timer(hung.replace("ISR\t (none)", "ISR\t 239 ")) is None)
check("a vector below the priority: not stuck", lab.expired_timer(hung.replace("PPR 0x10", "PPR 0xe0")) is None)
check("a timer still counting: not stuck",
      lab.expired_timer(hung.replace("current_count = 0", "current_count = 5")) is None)
check("another vector waiting, not the timer's: not the timer stuck",
      lab.expired_timer(hung.replace("IRR\t 236 ", "IRR\t 34(level) ")) is None
      and lab.undelivered_vectors(hung.replace("IRR\t 236 ", "IRR\t 34(level) 236 ")) == [34, 236])

# The watch against the real, paused QEMU: reads, finds nothing, presses no key.
lab.L1_WATCH_S = 0.2
watch = lab.InterruptWatch(f"{tmp}/l0mon.sock", 2, lambda: {"scenario": "s"})
lab.time.sleep(1.2)
first = lab.l0_snapshot(Proc(pid), tmp)  # shares the monitor with the watch
watch.stop()
check("no wake of a CPU with nothing pending (real monitor, two CPUs' APICs read)", watch.wakes == [])
check("a snapshot taken while the watch runs still gets its answers",
      open(f"{tmp}/l0-state.txt").read().count("(qemu) info lapic") == 2)

# The watch's decisions, on a monitor that replays APIC states (a fake: it is the logic under test).
def replay(states):
    sent, reads, done = [], [], lab.threading.Event()
    def monitor(sock, commands):
        sent.extend(c for c in commands if c.startswith("sendkey"))
        if not commands[0].startswith("info lapic"):
            return "RIP=ffffffff81192872 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0" if "info registers" in commands else ""
        reads.append(1)
        if len(reads) > len(states):  # every state read once: hold this read until the watch is stopped
            done.set()
            watch[0].stopped.wait(30)
        return states[min(len(reads), len(states)) - 1]
    real, lab.l0_monitor = lab.l0_monitor, monitor
    try:
        watch = [lab.InterruptWatch("unused", 1, lambda: {"scenario": "s", "last_run": "pvboot"})]
        done.wait(30)
        watch[0].stop()
        w = watch[0]
    finally:
        lab.l0_monitor = real
    replay.stuck = w.stuck
    return w.wakes, sent

clear = hung.replace("IRR\t 236 ", "IRR\t (none)")
rearmed = hung.replace("initial_count = 134925", "initial_count = 90210")  # taken, armed again, expired again
wakes, sent = replay([clear, hung, hung, clear, clear])
check(f"stuck at two reads: one key press, the timer taken at the read just after it ({wakes}, {sent})",
      sent == ["sendkey shift"] and len(wakes) == 1 and wakes[0]["vector"] == 236
      and wakes[0]["delivered"] is True and wakes[0]["last_run"] == "pvboot")
wakes, sent = replay([hung, clear, hung, clear, hung, clear])
check("waiting at one read at a time: no key press", sent == [] and wakes == [])
wakes, sent = replay([hung, rearmed, hung, rearmed, hung])
check("waiting at each read but armed again in between (a busy timer, not a lost one): no key press",
      sent == [] and wakes == [])
wakes, sent = replay([hung] * 6)
check(f"stuck for good: a key press after every two reads and the read after it, none taken ({len(sent)} presses), "
      f"one episode recorded ({wakes})",
      len(sent) == 2 and len(wakes) == 1 and wakes[0]["delivered"] is False and wakes[0]["presses"] == 2)
check(f"presses that do not help for less than L1_STUCK_S: not yet a hung L1 ({replay.stuck})", replay.stuck is None)
lab.L1_STUCK_S = 0
replay([hung] * 6)
check(f"presses that do not help for L1_STUCK_S: a hung L1, said so ({replay.stuck})",
      replay.stuck is not None and "L1 CPU 0" in replay.stuck and "2 key presses" in replay.stuck)
lab.L1_STUCK_S = 30
wakes, sent = replay([hung] * 6 + [clear, hung, hung])
check(f"an episode ends when the timer is seen taken: a new one after it ({[w.get('presses') for w in wakes]})",
      len(sent) == 3 and [w.get("presses") for w in wakes] == [2, 1])

# Wakes outlive a passing run's temporary files: appended, one JSON line each, to the cache's logs.
lab.record_wakes(f"{tmp}/cache", [], ["s"], "QEMU 7.2")
check("no wake, no file", not lab.os.path.exists(f"{tmp}/cache/logs/l1-woken.jsonl"))
lab.record_wakes(f"{tmp}/cache", wakes, ["bench"], "QEMU 7.2")
lab.record_wakes(f"{tmp}/cache", wakes[:1], ["soak"], "QEMU 7.2")
lines = [lab.json.loads(l) for l in open(f"{tmp}/cache/logs/l1-woken.jsonl")]
check(f"each wake a line, appended ({len(lines)} lines)", len(lines) == len(wakes) + 1
      and lines[0]["vector"] == 236 and lines[0]["scenarios"] == ["bench"] and lines[-1]["scenarios"] == ["soak"]
      and all("date" in l and l["qemu"] == "QEMU 7.2" for l in lines))
sys.exit(1 if failed else 0)
PY
