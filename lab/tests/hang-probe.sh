#!/usr/bin/env bash
# What lab/run does when L1 falls silent, run against a real L0 QEMU that is paused (-S: nothing runs, so
# nothing answers the kicks): the snapshot asks the monitor for registers, the local APIC and the IOAPIC,
# the kicks (an NMI, a key press) are commands the monitor accepts, and what the console said after a kick
# is counted. The hang path runs only when L1 really hangs; a mistake in it would surface just then.
set -uo pipefail
LAB=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'kill "$qpid" 2>/dev/null; rm -rf "$tmp"' EXIT
mkdir "$tmp/out"
qemu-system-x86_64 -S -accel tcg -M q35 -nodefaults -display none \
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
sys.exit(1 if failed else 0)
PY
