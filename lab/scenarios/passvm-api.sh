# passvm's HTTP API (cloud-hypervisor's, on a unix socket) and hot-plug of passthrough devices, driven
# with `passvm remote` while L2 runs (the flow is hotplug-lib.sh's; qemu-hotplug is the same with QEMU):
# - passvm --api-socket with a kernel and no device: the VM boots at once; ping, info (Running), counters.
# - pause/resume while L2 ticks every 100 ms: no tick while paused, info says Paused, a second pause is
#   refused, ticks come again after resume.
# - refusals: a device on no driver (00:07.0), one on a host driver (L1's NIC 00:05.0, which keeps it),
#   an unknown id to remove, a device added twice: exit status 1 and a message.
# - hot-plug: the NVMe 00:03.0 added, L2 writes and verifies 16 MiB, removed (ACPI eject), back to L1's
#   nvme driver which reads what L2 wrote, then to vfio-pci and added again; the same with the e1000e
#   00:04.0 and ping. The guest BDF passvm names must be where L2 finds the device. The NVMe's second
#   removal is asked while the VM is paused: answered at once, the VM stays paused with the device
#   listed, and after the resume the guest ejects it (api.remove_paused).
# - an NMI: L2 waits for one on every CPU once its hot-plug checks are done; `passvm remote nmi` sends it
#   and passvm says both vCPUs took it; /proc/interrupts counts it on each CPU.
# - the power button: L2 waits for a press once its hot-plug checks are done; `passvm remote
#   power-button` presses it and passvm says the guest had enabled the event; L2 counts the press.
# - L2 powers off: the VM is Shutdown and passvm still answers; shutdown-vmm makes it exit with 0; both
#   devices are back on vfio-pci, held by nobody, and usable by L1's drivers. The e1000e's I/O BAR, which
#   L2 placed itself at each hot-add, lay in passvm's I/O window.
# - Kata Containers: the requests its cloud-hypervisor driver sends (src/api/testdata/kata-clh/), replayed
#   with src/api/replay.py against a fresh passvm started with only --api-socket: the refusals, then the
#   hot-plug sequence; the L2 it boots must reach init before Kata's vmm.shutdown is sent.
# lab-expect: api.ping api.state.running api.counters api.pause api.state.paused api.err.pause_twice api.resume
# lab-expect: api.err.nodriver api.err.hostdriver api.err.unknown_id
# lab-expect: api.kvm_vfio api.add1 api.remove1 api.host1 api.add2 api.err.add_twice api.remove_paused api.remove2 api.add3 api.remove3 api.host3 api.add4 api.remove4
# lab-expect: api.nmi pva.nmi api.powerbutton pva.powerbutton api.err.powerbutton_off api.shutdown_config
# lab-expect: api.state.shutdown api.shutdown api.exit api.iobar api.final
# lab-expect: pva.vmm pva.boot pva.ticker pva.hot1.add pva.hot1.nvme pva.hot1.gone pva.hot1 pva.hot2.add pva.hot2.nvme pva.hot2.gone pva.hot2
# lab-expect: pva.hot3.add pva.hot3.ping pva.hot3.gone pva.hot3 pva.hot4.add pva.hot4.ping pva.hot4.gone pva.hot4
# lab-expect: kata.refused kata.replay kata.vmm kata.exit
# lab-timeout: 700

source "$LAB_DIR/scenarios/passvm-lib.sh"
source "$LAB_DIR/scenarios/hotplug-lib.sh"
pv_need_binary api.ping
HP_RUN=pva HP_PREFIX=api HP_MORE_CHECKS=nmi,powerbutton
HP_WANT_SLOT=1  # passvm numbers its hot-plug slots: L2 must list the device's in /sys/bus/pci/slots
SOCK=/tmp/pva-api.sock
REPO=$(cd "$LAB_DIR/.." && pwd)

# pvr ARGS...: passvm's client on our socket, bounded (remove-device waits for the guest's eject).
pvr() { timeout 120 "$PASSVM" remote --api-socket "${API_SOCK:-$SOCK}" "$@"; }
json_field() { /usr/bin/python3 -c 'import json, sys
try:
    print(json.load(sys.stdin).get(sys.argv[1], ""))
except (ValueError, AttributeError):
    print("?")' "$1"; }
vm_state() { pvr --json info 2>>"$HP_ERR" | json_field state; }

# How hotplug-lib drives passvm. add-device --json answers {"id":..,"bdf":..}: the guest BDF is compared
# with where L2 finds the device ("?" when the answer is not that JSON).
vmm_add() { local out; out=$(pvr --json add-device "$1" --id "$2") || return; json_field bdf <<<"$out"; }
vmm_remove() {
    if [[ $1 == hot2 ]]; then remove_while_paused "$1"; else pvr remove-device "$1" >/dev/null; fi
}
# remove_while_paused ID: the removal asked of a paused VM answers at once and leaves it paused with the
# device listed; resumed, the guest is asked again and ejects the device, which leaves vm.info (60 s).
remove_while_paused() {
    local id=$1 t0 ms rc state listed
    vmm_pause || { result api.remove_paused fail detail="pause failed: $(hp_err)"; return 1; }
    t0=$(now_ms)
    pvr remove-device "$id" --wait 0 >/dev/null; rc=$?
    ms=$(( $(now_ms) - t0 ))
    sleep 1
    state=$(vm_state)
    listed=$(pvr info --json 2>/dev/null | grep -c "\"$id\"")
    vmm_resume
    local i gone_ms
    t0=$(now_ms)
    for ((i = 0; i < 300; i++)); do
        [[ $(pvr info --json 2>/dev/null | grep -c "\"$id\"") == 0 ]] && { gone_ms=$(( $(now_ms) - t0 )); break; }
        sleep 0.2
    done
    local fig=(answer_ms="$ms" state="$state" listed="$listed" gone_after_resume_ms="${gone_ms:-never}")
    if [[ $rc != 0 ]]; then result api.remove_paused fail detail="remove-device of a paused VM exited $rc: $(hp_err)" "${fig[@]}"
    elif ((ms > 3000)); then result api.remove_paused fail detail="the answer took $ms ms: a paused guest was waited for" "${fig[@]}"
    elif [[ $state != Paused || $listed == 0 ]]; then result api.remove_paused fail detail="after asking: state '$state', device listed: $listed (expected Paused, listed)" "${fig[@]}"
    elif [[ -z $gone_ms ]]; then result api.remove_paused fail detail="still in vm.info 60 s after the resume" "${fig[@]}"; return 1
    else result api.remove_paused pass "${fig[@]}"; fi
}
vmm_pause() { pvr pause >/dev/null; }
vmm_resume() { pvr resume >/dev/null; }
vmm_stop() { pvr shutdown-vmm >/dev/null; }
# guest_event CHECK WHAT SAID GREP FIGURES...: once L2's CHECK says it is ready, `passvm remote` sends
# the event (the command is CHECK, power-button for powerbutton); L2 must report it seen and passvm's
# stderr say SAID (GREP finds what it said instead). Result api.CHECK with L2's FIGURES.
guest_event() {
    local check=$1 what=$2 said=$3 grep_for=$4 command=$1 f figs=()
    shift 4
    [[ $check == powerbutton ]] && command=power-button
    if ! hp_wait "L2MARK $check ready|\"check\":\"$check\"" 120; then
        result "api.$check" fail detail="L2 did not get to its $check check: $(hp_last_lines)"
    elif ! pvr "$command" >/dev/null 2>"$HP_ERR"; then
        result "api.$check" fail detail="$command exited $?: $(hp_err)"
    elif ! hp_wait_result "$check" 60; then
        result "api.$check" fail detail="L2 reported nothing within 60 s of $what: $(hp_last_lines)"
    elif [[ $(hp_l2 "$check" pass) != true ]]; then
        result "api.$check" fail detail="L2: $(hp_l2 "$check" detail)"
    elif ! grep -q "$said" "$HP_CONSOLE"; then
        result "api.$check" fail detail="L2 saw $what, but passvm did not say '$said': $(grep -m 1 "$grep_for" "$HP_CONSOLE")"
    else
        figs=(); for f in "$@"; do figs+=("$f=$(hp_l2 "$check" "$f")"); done
        result "api.$check" pass "${figs[@]}"
    fi
}

# refused CHECK WHY ARGS...: `passvm remote ARGS` must exit 1 with a message on stderr. With REFUSED_ALSO=FN,
# FN prints what else went wrong (nothing when all is well).
refused() {
    local check=$1 why=$2 rc out err also=""
    shift 2
    out=$(pvr "$@" 2>/tmp/pva-refused.err); rc=$?
    err=$(tr '\n' ' ' </tmp/pva-refused.err | head -c 300)
    [[ -n $REFUSED_ALSO ]] && also=$($REFUSED_ALSO)
    local fig=(command="$*" exit_code="$rc" message="$err")
    if [[ -n $also ]]; then result "$check" fail detail="$why: $also" "${fig[@]}"
    elif [[ $rc != 1 ]]; then result "$check" fail detail="$why: 'passvm remote $*' exited $rc, expected 1 (stdout: ${out:0:200})" "${fig[@]}"
    elif [[ -z $err ]]; then result "$check" fail detail="$why: exit status 1 but no message on stderr" "${fig[@]}"
    else result "$check" pass "${fig[@]}"; fi
}

state_check() {  # state_check CHECK WANTED
    local s; s=$(vm_state)
    if [[ $s == "$2" ]]; then result "$1" pass state="$s"
    else result "$1" fail detail="info --json says state '$s', expected '$2' ($(hp_err))" state="$s"; fi
}

hp_while_paused() {
    state_check api.state.paused Paused
    refused api.err.pause_twice "pausing a paused VM" pause
}
hp_while_added() {  # the device is in the guest: adding it again must be refused
    [[ $1 == 2 ]] && refused api.err.add_twice "adding $2 while the guest has it" add-device "$2" --id again
    [[ $1 == 1 ]] || return 0
    # KVM knows the VM has an assigned device (its interrupts can be posted): passvm holds a KVM-VFIO device.
    local pid n
    pid=$(pvr --json ping 2>/dev/null | json_field pid)
    n=$(ls -l "/proc/$pid/fd" 2>/dev/null | grep -c 'anon_inode:kvm-vfio')
    if [[ $n == 1 ]]; then result api.kvm_vfio pass pid="$pid"
    else result api.kvm_vfio fail detail="passvm (pid '$pid') holds $n KVM-VFIO devices while $2 is in the guest, expected 1"; fi
}

wait_socket() {  # wait_socket PATH: the API socket appears (30 s)
    local i
    for ((i = 0; i < 150; i++)); do [[ -S $1 ]] && return 0; hp_running || return 1; sleep 0.2; done
    return 1
}

# kata_replay SEQUENCE OUT: src/api/replay.py sends SEQUENCE's requests to the Kata passvm and checks the
# answers (the one place that knows replay.py's command line). The L2 kernel, initramfs and command line
# go into vm.create, the NVMe is the device hot-added. --timeout: vm.remove-device answers once the guest
# ejected the device, and L2 (still booting when Kata's sequence gets there) ejects once its ACPI is up.
kata_replay() {
    /usr/bin/python3 "$REPO/src/api/replay.py" --socket "$API_SOCK" --timeout 240 \
        --set KERNEL="$L2_KERNEL" --set INITRD="$L2_INITRD" --set CMDLINE="$(l2_append hold)" \
        --set DEVICE=$HP_NVME --set IMAGE=/nonexistent/kata.img --set SANDBOX=lab "$1" >>"$2" 2>&1
}

# kata_split SEQUENCE HEAD TAIL: the sequence without its last step (Kata's vmm.shutdown) and that step
# alone, body files made absolute: the guest gets to run before the VMM is shut down.
kata_split() {
    /usr/bin/python3 - "$@" <<'PY'
import json, os, sys
src, head, tail = sys.argv[1:4]
steps = json.load(open(src))
for s in steps:
    if "body_file" in s:
        s["body_file"] = os.path.join(os.path.dirname(os.path.abspath(src)), s["body_file"])
json.dump(steps[:-1], open(head, "w"), indent=1)
json.dump(steps[-1:], open(tail, "w"), indent=1)
print(steps[-1]["path"])
PY
}

for bdf in $HP_NVME $HP_NIC; do
    bind_vfio $bdf || { result api.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
done
rm -f "$SOCK"
# --grace: in API mode passvm stays up after L2's power-off until shutdown-vmm, which comes from here.
hp_start --timeout 420 --grace 60 -- \
    "$PASSVM" --api-socket "$SOCK" -c 2 -m 512M -s 0,hostbridge -l com1,stdio \
    --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --append "$(hp_append)" labvm

run_main() {
    local out rc nic_drv
    wait_socket "$SOCK" || { result api.ping fail detail="no API socket $SOCK within 30 s: $(hp_last_lines)"; return 1; }
    out=$(pvr ping 2>"$HP_ERR"); rc=$?
    if [[ $rc == 0 ]]; then result api.ping pass answer="${out:0:200}"
    else result api.ping fail detail="ping exited $rc: $(hp_err)"; return 1; fi
    state_check api.state.running Running
    out=$(pvr counters 2>"$HP_ERR"); rc=$?
    if [[ $rc == 0 && -n $out ]]; then result api.counters pass bytes="${#out}"
    else result api.counters fail detail="counters exited $rc with ${#out} bytes: $(hp_err)"; fi

    hp_pause_test || return 1

    refused api.err.nodriver "adding 00:07.0, which is on no driver" add-device 0000:00:07.0
    nic_drv=$(bdf_driver 0000:00:05.0)
    nic_kept() { [[ $(bdf_driver 0000:00:05.0) == "$nic_drv" ]] || echo "00:05.0 went from driver '$nic_drv' to '$(bdf_driver 0000:00:05.0)'"; }
    REFUSED_ALSO=nic_kept refused api.err.hostdriver "adding L1's own NIC 00:05.0 (driver $nic_drv)" add-device 0000:00:05.0
    refused api.err.unknown_id "removing an id nothing has" remove-device nosuchdevice

    hp_cycle 1 $HP_NVME nvme host && hp_cycle 2 $HP_NVME nvme - \
        && hp_cycle 3 $HP_NIC ping host && hp_cycle 4 $HP_NIC ping - || return 1

    # An NMI, sent once L2 waits for it: every CPU counts one, and passvm says every vCPU took it.
    guest_event nmi "the NMI" "NMI sent to 2 vCPUs" "NMI sent" cpus waited_s
    # The power button, pressed once L2 waits for it; passvm says whether the guest listens.
    guest_event powerbutton "the press" "power button pressed: the guest may shut down now" "power button" \
        presses waited_s

    # L2 powers off after its last check: the VM is Shutdown, passvm keeps running until told.
    hp_wait '"check":"done"' 60 || { result api.state.shutdown fail detail="L2 did not finish: $(hp_last_lines)"; return 1; }
    local i s=""
    for ((i = 0; i < 50; i++)); do s=$(vm_state); [[ $s == Shutdown ]] && break; sleep 0.2; done
    if [[ $s == Shutdown ]] && hp_running; then result api.state.shutdown pass state="$s"
    else result api.state.shutdown fail detail="after L2's power-off: state '$s', passvm running: $(hp_running && echo yes || echo no)"; fi
    refused api.err.powerbutton_off "pressing the power button of a VM that is shut down" power-button
    # A VM that is shut down keeps its config, which devices may join and leave before the next boot.
    local added removed
    added=$(pvr add-device $HP_NVME --id cold 2>"$HP_ERR"); rc=$?
    if [[ $rc != 0 ]]; then result api.shutdown_config fail detail="add-device while Shutdown exited $rc: $(hp_err)"
    elif [[ $(pvr info --json 2>/dev/null | grep -c '"cold"') == 0 ]]; then result api.shutdown_config fail detail="add-device said '$added', but info does not list 'cold'"
    elif ! removed=$(pvr remove-device cold 2>"$HP_ERR"); then result api.shutdown_config fail detail="remove-device while Shutdown failed: $(hp_err)"
    elif [[ $(pvr info --json 2>/dev/null | grep -c '"cold"') != 0 ]]; then result api.shutdown_config fail detail="remove-device said '$removed', but info still lists 'cold'"
    else result api.shutdown_config pass; fi
    out=$(pvr shutdown-vmm 2>"$HP_ERR"); rc=$?
    if [[ $rc == 0 ]]; then result api.shutdown pass
    else result api.shutdown fail detail="shutdown-vmm exited $rc: $(hp_err)"; fi
}
run_main
hp_finish
if [[ $(hp_summary exited_by_itself) == true && $(hp_summary exit_code) == 0 ]]; then
    result api.exit pass exit_code=0 socket_left="$([[ -e $SOCK ]] && echo yes || echo no)"
else
    result api.exit fail detail="passvm exit status '$(hp_summary exit_code)', exited by itself: '$(hp_summary exited_by_itself)'"
fi
# L2 placed the hot-added e1000e's I/O BAR itself, from the host bridge's windows: it must lie where
# passvm maps I/O BARs (0xc000-0xffff), or a driver that uses it would find nothing there.
iobad="" iofigs=()
for h in hot3 hot4; do
    io=$(hp_l2 $h io)
    iofigs+=("$h=$io")
    if [[ ! $io =~ ^0x[0-9a-fA-F]+$ ]] || (( io < 0xc000 || io > 0xffff )); then iobad+="$h's I/O BAR at '$io'; "; fi
done
if [[ -z $iobad ]]; then result api.iobar pass "${iofigs[@]}"
else result api.iobar fail detail="outside passvm's I/O window 0xc000-0xffff: $iobad" "${iofigs[@]}"; fi
hp_final api.final
rm -f "$SOCK"

# ---- Kata Containers' requests (src/api/testdata/kata-clh/) against a fresh passvm that has only its API
# socket: refused.json (vm.create bodies passvm must refuse, and why), then sequence.json (create with 2 GiB,
# boot, hot-add and remove the NVMe, pause, resume, info) up to its vmm.shutdown, which is sent once L2
# reached init and holds: the VM Kata's vm.create describes boots the lab's guest.
HP_RUN=kata API_SOCK=/tmp/kata-api.sock
KATA=$REPO/src/api/testdata/kata-clh KOUT=$LAB_OUT/kata.replay.txt
: >"$KOUT"
rm -f "$API_SOCK"
hp_start --timeout 240 -- "$PASSVM" --api-socket "$API_SOCK"
if ! wait_socket "$API_SOCK"; then
    result kata.refused fail detail="no API socket $API_SOCK within 30 s: $(hp_last_lines)"
    result kata.replay fail detail="not run: no API socket"
else
    if kata_replay "$KATA/refused.json" "$KOUT"; then result kata.refused pass steps="$(grep -c ' ok$' "$KOUT")"
    else result kata.refused fail detail="refused.json: $(tail -n 3 "$KOUT" | tr '\n' ' ' | tail -c 600)"; fi
    last=$(kata_split "$KATA/sequence.json" "$LAB_OUT/kata-head.json" "$LAB_OUT/kata-tail.json")
    why=""
    if ! kata_replay "$LAB_OUT/kata-head.json" "$KOUT"; then why="sequence.json: $(tail -n 3 "$KOUT" | tr '\n' ' ')"
    elif ! hp_wait_result hold 240; then why="L2 did not reach init and hold within 240 s: $(hp_last_lines)"
    elif ! kata_replay "$LAB_OUT/kata-tail.json" "$KOUT"; then why="sequence.json's last step ($last): $(tail -n 3 "$KOUT" | tr '\n' ' ')"; fi
    if [[ -z $why ]]; then result kata.replay pass steps="$(grep -c ' ok$' "$KOUT")" l2_held=yes
    else result kata.replay fail detail="${why:0:700}"; fi
fi
i=0; while hp_running && ((i++ < 50)); do sleep 0.2; done  # Kata's vmm.shutdown stops passvm
hp_finish
if [[ $(hp_summary exited_by_itself) == true && $(hp_summary exit_code) == 0 ]]; then result kata.exit pass exit_code=0
else result kata.exit fail detail="passvm exit status '$(hp_summary exit_code)', exited by itself: '$(hp_summary exited_by_itself)'"; fi
rm -f "$API_SOCK"
