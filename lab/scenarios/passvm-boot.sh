# passvm boots the L2 guest with no device passed through: 2 vCPUs and 512 MiB reach
# init, the PCI bus lists the host bridge, a line typed on passvm's stdin runs in L2's
# shell, and the guest's poweroff makes passvm exit 0. L2 names its CPU as L1 does (pv.cpumodel):
# KVM leaves the processor's name out of the CPUID it offers, and passvm fills it in. The RTC is
# the DSDT's PNP0B00 device, as on a PC, and Linux binds rtc_cmos to it (pv.rtc); its interrupt
# reaches the guest, for the update interrupt hwclock waits for and for an alarm (pv.rtcirq).
# Then the same guest with console=hvc0 on passvm's virtio console (-l virtio-console,stdio): init's
# output reaches passvm's stdout and a typed line reaches L2's shell through it (pvhvc.*), and the
# guest's printing no longer reads the UART's status register per character (pvhvc.exits: passvm's
# --stats, against the ttyS0 boot's).
# Last, a guest that triple-faults on purpose: its kernel finds no init and no root and panics, and
# reboot=t makes its restart a triple fault (an empty IDT, then int3). passvm stops with exit status 3
# and says how the guest stopped (pvreset.vmm), and the lab names where (pvreset.located: L1's trace of
# the shutdown exit, run_l2.py's ShutdownTrace), as it would for a guest that resets early by accident.
# lab-expect: pvreset.vmm pvreset.located
# And a guest on hvc0 that panics before its virtio console driver runs (the same missing init, panic=-1):
# it prints nothing passvm can show, and passvm must say why and how to see its messages
# (pvhvcstop.hint); the ttyS0 guest above printed its panic, so passvm adds no such hint there.
# lab-expect: pvhvcstop.vmm pvhvcstop.hint
# The kernel installers' hook (packaging/kernel/passvm-kernel-cache, as Debian's postinst.d calls it)
# unpacks L2's kernel into the shared cache, /var/cache/passvm, as root's and readable by all (hook.add);
# the triple-faulting guest above then boots with an empty cache of its own and its kernel comes from the
# shared one (hook.used).
# lab-expect: hook.add hook.used
# And a guest that panics after init with panic=0, so that it would spin there for ever: its pvpanic driver
# bound to passvm's device (pvpanic.panic), passvm stops by itself with exit status 7 (pvpanic.vmm) and
# says the guest panicked, after the guest's own panic message (pvpanic.said); then the same with the
# lab's usual panic=-1, where the guest reboots at once: still exit status 7, and passvm says both
# (pvpanicreset.said).
# lab-expect: pvpanic.vmm pvpanic.panic pvpanic.said pvpanicreset.vmm pvpanicreset.panic pvpanicreset.said
# lab-expect: pv.vmm pv.boot pv.cpus pv.mem pv.lspci pv.console pv.cpumodel pv.rtc pv.rtcirq
# lab-expect: pvhvc.vmm pvhvc.boot pvhvc.cpus pvhvc.console pvhvc.exits
# lab-timeout: 600

if [[ -z $PASSVM || ! -x $PASSVM ]]; then
    result pv.vmm fail detail="no passvm binary: run lab/run --passvm BUILD/src/cli/passvm"
    exit 1
fi
run_l2 pv --timeout 360 --type 'echo L2CON$((40+2))' -- \
    "$PASSVM" -c 2 -m 512M -s 0,hostbridge -l com1,stdio --stats \
    --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
    --append "$(l2_append cpus,mem,lspci,rtcirq,console lab.cpus=2 lab.mem_mb=512 lab.expect_pci=1b36:0008)" labvm
host=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1 | tr -d '"\\')
guest=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["checks"]["cpus"]["model"])' \
        "$LAB_OUT/pv.summary.json" 2>/dev/null)
if [[ -n $host && $guest == "$host" ]]; then
    result pv.cpumodel pass model="$guest"
else
    result pv.cpumodel fail l1="$host" l2="$guest" detail="L2 names its CPU '$guest', L1 '$host'"
fi
console="$LAB_OUT/pv.console"
if grep -Eq 'rtc_cmos 00:[0-9a-f]+: registered as rtc0' "$console" && ! grep -q 'no PNP device found' "$console"; then
    result pv.rtc pass
else
    result pv.rtc fail detail="rtc_cmos did not bind to the DSDT's RTC: $(grep -m 3 -e rtc_cmos -e 'PNP device' "$console" | tr -s ' \n' ' ')"
fi

L2_CONSOLE=hvc0 run_l2 pvhvc --timeout 360 --type 'echo L2CON$((40+2))' -- \
    "$PASSVM" -c 2 -m 512M -s 0,hostbridge -l com1,stdio -l virtio-console,stdio --stats \
    --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
    --append "$(L2_CONSOLE=hvc0 l2_append cpus,console lab.cpus=2)" labvm
# "exits by address (busiest first): port 0x3fd read (COM1 LSR) 18211, mmio 0xfeb00050 write (virtio
# console notify) 1210, ...": a site not listed took fewer exits than the listed ones.
count() { sed -n "s/.*exits by address.*[ :]\([^,]*($2)\) \([0-9]*\).*/\2/p" "$LAB_OUT/$1.console" | head -n 1; }
lsr_tty=$(count pv 'COM1 LSR'); lsr_hvc=$(count pvhvc 'COM1 LSR'); notify=$(count pvhvc 'virtio console notify')
if [[ -n $lsr_tty && -n $notify && $notify -gt 0 && ${lsr_hvc:-0} -lt $((lsr_tty / 10)) ]]; then
    result pvhvc.exits pass lsr_reads_ttyS0="$lsr_tty" lsr_reads_hvc0="${lsr_hvc:-0}" notifies_hvc0="$notify"
else
    result pvhvc.exits fail lsr_reads_ttyS0="$lsr_tty" lsr_reads_hvc0="$lsr_hvc" notifies_hvc0="$notify" \
        detail="expected virtio notifications and a tenth of the ttyS0 boot's UART status reads at most: $(grep -m 1 'exits by address' "$LAB_OUT/pvhvc.console")"
fi

hook=$(dirname "$PASSVM")/passvm-kernel-cache
[[ -x $hook ]] || hook=$LAB_DIR/../build/src/cli/passvm-kernel-cache
version=$(basename "$L2_KERNEL"); version=${version#vmlinuz-}
if [[ ! -x $hook ]]; then
    result hook.add fail detail="no passvm-kernel-cache next to $PASSVM or in $LAB_DIR/../build/src/cli: build the tree"
else
    PASSVM=$PASSVM "$hook" "$version" "$L2_KERNEL" >"$LAB_OUT/hook.out" 2>"$LAB_OUT/hook.err"
    rc=$?
    entry=$(ls /var/cache/passvm/kernel-*.unpacked 2>/dev/null | head -n 1)
    owner=$([[ -n $entry ]] && stat -c '%U %a' "$entry")
    if [[ $rc -eq 0 && ! -s $LAB_OUT/hook.out && -n $entry && $owner == "root 644" ]]; then
        result hook.add pass entry="$entry" said="$(head -n 1 "$LAB_OUT/hook.err")"
    else
        result hook.add fail rc=$rc entry="$entry" owner="$owner" \
            detail="the hook should exit 0, print nothing on stdout and leave a root-owned 0644 entry: stdout '$(head -c 200 "$LAB_OUT/hook.out")', stderr '$(head -c 300 "$LAB_OUT/hook.err")'"
    fi
fi
own_cache=$(mktemp -d /tmp/passvm-own-cache.XXXXXX)
PASSVM_CACHE_DIR=$own_cache run_l2 pvreset --timeout 240 --expect-reset -- \
    "$PASSVM" -v -c 1 -m 256M -l com1,stdio \
    --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
    --append "console=ttyS0 panic=-1 nokaslr pci=noearly reboot=t rdinit=/nonexistent" labvm
/usr/bin/python3 - "$LAB_OUT/pvreset.summary.json" "$LAB_OUT/pvreset.console" <<'PY'
import json, os, sys
fig, detail = {}, ""
try:
    vmm = json.load(open(sys.argv[1]))["vmm"]
    console = open(sys.argv[2], errors="replace").read()
except (OSError, ValueError) as e:
    vmm, console, detail = {}, "", f"no record of the run: {e}"
faults = vmm.get("l2_triple_faults") or []
said = next((l.strip().split(None, 1)[-1] for l in console.splitlines() if "triple-faulted" in l), "")
fig = {"exit_code": vmm.get("exit_code"), "faults": faults, "passvm_said": said}
where = faults[0]["symbol"] if faults else ""
if not detail and vmm.get("exit_code") != 3:
    detail = f"passvm exited with status {vmm.get('exit_code')}, not 3 (a triple fault)"
elif not detail and not said:
    detail = "passvm did not say that the guest triple-faulted"
elif not detail and not where.startswith("native_machine_emergency_restart+"):
    detail = (f"L1's trace should place the fault in native_machine_emergency_restart (reboot=t's int3), "
              f"found {faults or 'no shutdown exit'}")
print("LABRESULT " + json.dumps({"scenario": os.environ.get("LAB_SCENARIO", "?"), "check": "pvreset.located",
      "pass": not detail, "figures": fig, "detail": detail}, separators=(",", ":")), flush=True)
PY

from=$(grep -m 1 -o 'unpacked kernel loaded from the cache [^ ]*' "$LAB_OUT/pvreset.console")
if [[ $from == *" /var/cache/passvm/kernel-"* ]]; then
    result hook.used pass said="$from"
else
    result hook.used fail detail="with an empty own cache the kernel should come from /var/cache/passvm; passvm said: '${from:-$(grep -m 2 -e 'kernel unpacked' -e 'kernel loaded' "$LAB_OUT/pvreset.console" | tr -s ' \n' ' ')}'"
fi
rm -rf "$own_cache"

run_l2 pvhvcstop --timeout 240 --expect-reset -- \
    "$PASSVM" -c 1 -m 256M -l virtio-console,stdio \
    --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
    --append "console=hvc0 panic=-1 nokaslr pci=noearly rdinit=/nonexistent" labvm
/usr/bin/python3 - "$LAB_OUT/pvhvcstop.summary.json" "$LAB_OUT/pvhvcstop.console" "$LAB_OUT/pvreset.console" <<'PY'
import json, os, sys
detail = ""
try:
    vmm = json.load(open(sys.argv[1]))["vmm"]
    console = open(sys.argv[2], errors="replace").read()
    ttys0 = open(sys.argv[3], errors="replace").read()
except (OSError, ValueError) as e:
    vmm, console, ttys0, detail = {}, "", "", f"no record of the runs: {e}"
marker = "the guest printed nothing before it stopped"
said = next((l.strip().split(None, 1)[-1] for l in console.splitlines() if marker in l), "")
fig = {"exit_code": vmm.get("exit_code"), "passvm_said": said}
if not detail and vmm.get("exit_code") != 2:
    detail = f"passvm exited with status {vmm.get('exit_code')}, not 2 (the guest's reset after its panic)"
elif not detail and not ("virtio console driver" in said and "console=ttyS0" in said):
    detail = f"passvm did not say why the hvc0 guest showed nothing and how to see its messages: {said!r}"
elif not detail and marker in ttys0:
    detail = "passvm said the ttyS0 guest printed nothing, but it printed its panic"
print("LABRESULT " + json.dumps({"scenario": os.environ.get("LAB_SCENARIO", "?"), "check": "pvhvcstop.hint",
      "pass": not detail, "figures": fig, "detail": detail}, separators=(",", ":")), flush=True)
PY

# pvpanic_said RUN [WORDS]: passvm's panic line (with WORDS in it) after the guest's own panic message.
pvpanic_said() {
    /usr/bin/python3 - "$1" "$LAB_OUT/$1.console" "${2:-}" <<'PY'
import json, os, sys
name, path, words = sys.argv[1:4]
try:
    lines = open(path, errors="replace").read().splitlines()
except OSError:
    lines = []  # then neither line is found, and the detail says so
guest = next((i for i, l in enumerate(lines) if "Kernel panic - not syncing: sysrq triggered crash" in l), None)
said = next((i for i, l in enumerate(lines) if "the guest kernel panicked: it said so through its pvpanic device" in l),
            None)
text = lines[said].strip().split(None, 1)[-1] if said is not None else ""
detail = ("the guest's panic message is not on the console" if guest is None else
          "passvm did not say that the guest panicked" if said is None else
          "passvm said the guest panicked before the guest's own panic message" if said < guest else
          f"passvm's line does not say {words!r}: {text!r}" if words not in text else "")
print("LABRESULT " + json.dumps({"scenario": os.environ.get("LAB_SCENARIO", "?"), "check": f"{name}.said",
      "pass": not detail, "figures": {"passvm_said": text}, "detail": detail}, separators=(",", ":")), flush=True)
PY
}
run_l2 pvpanic --timeout 240 --expect-exit 7 -- \
    "$PASSVM" -c 1 -m 256M -l com1,stdio \
    --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --append "$(l2_append panic) panic=0" labvm
pvpanic_said pvpanic
# The usual panic=-1: the guest reboots at once, within passvm's grace for its last output.
run_l2 pvpanicreset --timeout 240 --expect-exit 7 -- \
    "$PASSVM" -c 1 -m 256M -l com1,stdio \
    --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --append "$(l2_append panic)" labvm
pvpanic_said pvpanicreset "then the guest reset the machine"
