# Helpers for the hot-plug scenarios (passvm-api, qemu-hotplug). Not a scenario itself: those source
# it after lib.sh. One L2 boots with no device and runs the L2 checks ticker, hot1..hot4 (lab/README.md);
# the scenario runs the VMM in the background with run_l2 and, following L2's console, pauses and
# resumes it, hot-adds and removes devices, and between two adds of one device gives it back to its L1
# driver and uses it there. L2's own results come from run_l2 at the end (RUN.ticker, RUN.hot1.add...);
# the L1 side reports PREFIX.* checks as it goes.
#
# The scenario sets HP_RUN (run_l2's name), HP_PREFIX (its L1 checks' prefix) and defines how to drive
# its VMM:
#   vmm_add BDF ID     hot-add host device BDF as ID; prints the guest BDF when the VMM says it; 0 on success
#   vmm_remove ID      remove it, returning once the guest let it go (or the VMM says it failed)
#   vmm_pause / vmm_resume / vmm_stop (ask the VMM to exit)
# HP_WANT_SLOT=1: L2 must have registered a slot (/sys/bus/pci/slots/N) for the device's address.
# Optional hooks: hp_while_paused (runs during the pause), hp_while_added N BDF (device N is in the guest
# and L2 has used it).
# Each of these gets its stderr in $HP_ERR, for the failure's detail.

HP_NVME=0000:00:03.0 HP_NIC=0000:00:04.0
HP_HOTWAIT=180  # lab.hotwait: how long L2 waits for each add and each removal
HP_ERR=/tmp/hp-vmm.err

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# The L2 command line: ticker, then nvme twice, then the e1000e twice (lab.hotN=vvvv:dddd:INNER), then
# the checks of HP_MORE_CHECKS (comma-separated).
hp_append() {
    l2_append ticker,hot1,hot2,hot3,hot4${HP_MORE_CHECKS:+,$HP_MORE_CHECKS} lab.tick_s=30 lab.hotwait=$HP_HOTWAIT \
        lab.hot1=1b36:0010:nvme lab.hot2=1b36:0010:nvme lab.hot3=8086:10d3:ping lab.hot4=8086:10d3:ping "$@"
}

# hp_start RUN_L2_ARGS... -- CMD...: run_l2 in the background; its console is $HP_CONSOLE.
hp_start() {
    HP_CONSOLE=$LAB_OUT/$HP_RUN.console
    rm -f "$HP_CONSOLE" "$LAB_OUT/$HP_RUN.summary.json"
    run_l2 "$HP_RUN" "$@" &
    HP_RUN_PID=$!
}
hp_running() { kill -0 "$HP_RUN_PID" 2>/dev/null; }
hp_vmm_pid() { cat "$LAB_OUT/$HP_RUN.pid" 2>/dev/null; }

# hp_wait EXTENDED_REGEX TIMEOUT_S: until a console line matches; 1 on timeout or when the VMM run ended.
hp_wait() {
    local deadline=$(( $(now_ms) + $2 * 1000 ))
    while (( $(now_ms) < deadline )); do
        grep -qE -- "$1" "$HP_CONSOLE" 2>/dev/null && return 0
        hp_running || { grep -qE -- "$1" "$HP_CONSOLE" 2>/dev/null; return; }
        sleep 0.2
    done
    return 1
}
hp_wait_result() { hp_wait "L2RESULT \{\"check\":\"$1\"" "$2"; }  # hp_wait_result L2CHECK TIMEOUT_S

# hp_l2 L2CHECK KEY: KEY (pass, detail, or a figure) of L2's result L2CHECK on the console; empty if none.
hp_l2() {
    /usr/bin/python3 - "$HP_CONSOLE" "$1" "$2" <<'PY'
import json, sys
path, check, key = sys.argv[1:4]
val = ""
try:
    lines = open(path, errors="replace").readlines()
except OSError:
    lines = []
for line in lines:
    i = line.find("L2RESULT ")
    if i < 0:
        continue
    try:
        r, _ = json.JSONDecoder().raw_decode(line[i + 9:])  # kernel output may follow it on its line
    except ValueError:
        continue
    if r.get("check") != check:
        continue
    val = {"pass": "true" if r.get("pass") else "false", "detail": r.get("detail", "")}.get(
        key, r.get("figures", {}).get(key, ""))
print(val)
PY
}
hp_last_lines() { tail -n "${1:-4}" "$HP_CONSOLE" 2>/dev/null | cut -c10- | tr '\n' '|' | tail -c 500; }
hp_last_tick() { grep -oE 'L2TICK [0-9]+$' "$HP_CONSOLE" 2>/dev/null | tail -n 1 | cut -d' ' -f2; }
hp_err() { tr '\n' ' ' <"$HP_ERR" 2>/dev/null | head -c 300; }

# hp_tick_gap: "GAP_MS AFTER_TICK": the longest silence between two ticks on the console (ms timestamps).
hp_tick_gap() {
    awk '$2 == "L2TICK" { if (n++ && $1 - t > gap) { gap = $1 - t; after = prev } t = $1; prev = $3 }
         END { print gap + 0, after + 0 }' "$HP_CONSOLE" 2>/dev/null
}

# hp_pause_test: L2 ticks every 100 ms; the VM is paused for at least 3.5 s and resumed. PREFIX.pause: no
# tick from 1 s after the pause command returned until the resume (a tick on its way through the UART
# and the pipes may still arrive in the first second), and the console shows a silence of 3 s or more;
# PREFIX.resume: ticks come again. paused_ms: from the pause command's return to the resume command.
hp_pause_test() {
    local p=$HP_PREFIX t0 rc n1 n2 n3 gap after paused_ms
    if ! hp_wait 'L2TICK 10$' 420; then
        result "$p.pause" fail detail="L2 never ticked (ticker check not reached): $(hp_last_lines)"
        return 1
    fi
    vmm_pause 2>"$HP_ERR"; rc=$?
    if [[ $rc != 0 ]]; then
        result "$p.pause" fail detail="pause failed (status $rc): $(hp_err)"
        return 1
    fi
    t0=$(now_ms)  # paused from here at the latest (the command returned)
    sleep 1  # a tick already on its way through the UART and the pipes may still arrive
    n1=$(hp_last_tick)
    declare -F hp_while_paused >/dev/null && hp_while_paused
    while (( $(now_ms) - t0 < 3500 )); do sleep 0.2; done
    n2=$(hp_last_tick)
    paused_ms=$(( $(now_ms) - t0 ))
    vmm_resume 2>"$HP_ERR"; rc=$?
    [[ $rc == 0 ]] && hp_wait "L2TICK $((n2 + 5))\$" 30
    n3=$(hp_last_tick)
    read -r gap after <<<"$(hp_tick_gap)"  # (no <(...): L1's /dev has no /dev/fd)
    local fig=(tick_at_pause="$n1" tick_before_resume="$n2" tick_after_resume="$n3" paused_ms="$paused_ms"
               longest_silence_ms="$gap" silence_after_tick="$after")
    if [[ $n1 != "$n2" ]]; then result "$p.pause" fail detail="L2 ticked while paused: tick $n1 1 s after the pause, $n2 before the resume" "${fig[@]}"
    elif (( gap < 3000 )); then result "$p.pause" fail detail="the console shows no silence of 3 s (longest ${gap} ms)" "${fig[@]}"
    else result "$p.pause" pass "${fig[@]}"; fi
    if [[ $rc != 0 ]]; then result "$p.resume" fail detail="resume failed (status $rc): $(hp_err)" "${fig[@]}"; return 1
    elif (( n3 < n2 + 5 )); then result "$p.resume" fail detail="no ticks within 30 s of the resume (last tick $n3)" "${fig[@]}"; return 1
    else result "$p.resume" pass "${fig[@]}"; fi
}

# hp_group_free BDF: nobody holds the device's VFIO group, and no process holds any VFIO device (call
# it when no device should be attached). Waits up to 10 s; prints what still holds it.
hp_group_free() {
    local g i held
    g=$(basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")")
    for ((i = 0; i < 50; i++)); do
        held=$(ls -l /proc/[0-9]*/fd 2>/dev/null | grep -cE " /dev/vfio/$g\$|\[vfio-device\]")
        [[ $held == 0 ]] && return 0
        sleep 0.2
    done
    echo "$held open file(s) of VFIO group $g or of a VFIO device"
    return 1
}

# l1_nvme_ns BDF: the block device of the NVMe namespace of L1's controller at BDF (native multipath:
# the subsystem's disk, next to a link named after the controller).
l1_nvme_ns() {
    local c s n
    for c in /sys/bus/pci/devices/$1/nvme/nvme*; do
        c=${c##*/}
        for s in /sys/class/nvme-subsystem/*/ "/sys/bus/pci/devices/$1/nvme/$c/"; do
            [[ $s == */nvme/$c/ || -e $s$c ]] || continue
            for n in "$s"nvme*; do
                n=${n##*/}
                [[ $n =~ ^nvme[0-9]+n[0-9]+$ ]] && { echo "$n"; return 0; }
            done
        done
    done
    return 1
}

# hp_host_use BDF: the device back on its L1 driver, used there, then on vfio-pci again. NVMe: L1 reads
# 4 MiB of its namespace, which holds what L2 wrote last (random data: nonzero); e1000e: the interface
# comes up with a carrier. Prints "ok FIGURES..." or the reason; 0 on success.
hp_host_use() {
    local bdf=$1 i drv ns nz ifc t0=$(now_ms) why=""
    if ! hp_group_free "$bdf" >/tmp/hp-held; then echo "not given back: $(cat /tmp/hp-held)"; return 1; fi
    unbind_vfio "$bdf"
    for ((i = 0; i < 150; i++)); do
        drv=$(bdf_driver "$bdf")
        if [[ $drv == nvme ]]; then ns=$(l1_nvme_ns "$bdf") && [[ -b /dev/$ns ]] && break
        elif [[ $drv == e1000e ]]; then ifc=$(ls "/sys/bus/pci/devices/$bdf/net" 2>/dev/null | head -n 1); [[ -n $ifc ]] && break; fi
        sleep 0.2
    done
    if [[ $drv == nvme && -n $ns ]]; then
        nz=$(dd if="/dev/$ns" bs=1M count=4 iflag=direct 2>/dev/null | tr -d '\000' | wc -c)
        (( nz > 2 * 1024 * 1024 )) || why="L1 read $nz nonzero bytes of 4 MiB from /dev/$ns: not what L2 wrote"
        set -- "driver=nvme" "namespace=$ns" "nonzero_bytes=$nz"
    elif [[ $drv == e1000e && -n $ifc ]]; then
        ip link set "$ifc" up
        for ((i = 0; i < 100; i++)); do [[ $(cat "/sys/class/net/$ifc/carrier" 2>/dev/null) == 1 ]] && break; sleep 0.1; done
        [[ $(cat "/sys/class/net/$ifc/carrier" 2>/dev/null) == 1 ]] || why="L1's $ifc has no carrier 10 s after going up"
        ip link set "$ifc" down
        set -- "driver=e1000e" "iface=$ifc"
    else
        why="L1's driver did not take it back within 30 s (driver '$drv', namespace '$ns', interface '$ifc')"
        set --
    fi
    bind_vfio "$bdf" >/dev/null || why="${why:+$why; }bind_vfio failed afterwards (driver $(bdf_driver "$bdf"))"
    if [[ -n $why ]]; then echo "$why"; return 1; fi
    echo "ok $* host_ms=$(( $(now_ms) - t0 ))"
}

# hp_cycle N BDF INNER HOST: hot-add BDF as hotN, wait for L2's hotN.add and hotN.INNER, remove it, wait for
# hotN.gone; with HOST=host, then hp_host_use. Reports PREFIX.addN, PREFIX.removeN (and PREFIX.hostN).
# Returns 1 when going on makes no sense (the device could not be added or removed).
hp_cycle() {
    local n=$1 bdf=$2 inner=$3 host=$4 p=$HP_PREFIX id=hot$1 t0 rc vbdf lbdf ms out
    t0=$(now_ms)
    vbdf=$(vmm_add "$bdf" "$id" 2>"$HP_ERR"); rc=$?
    ms=$(( $(now_ms) - t0 ))
    if [[ $rc != 0 ]]; then
        result "$p.add$n" fail detail="adding $bdf as $id failed (status $rc): $(hp_err)" add_ms="$ms"
        return 1
    fi
    hp_wait_result "$id.add" $((HP_HOTWAIT + 30))
    lbdf=$(hp_l2 "$id.add" bdf)
    local fig=(device="$bdf" id="$id" add_ms="$ms" vmm_bdf="$vbdf" l2_bdf="$lbdf" l2_wait_ms="$(hp_l2 "$id.add" wait_ms)"
               l2_driver="$(hp_l2 "$id.add" driver)" l2_slot="$(hp_l2 "$id.add" slot)")
    if [[ $(hp_l2 "$id.add" pass) != true ]]; then
        result "$p.add$n" fail detail="L2 did not see $bdf arrive: $(hp_l2 "$id.add" detail) $(hp_last_lines)" "${fig[@]}"
    elif [[ -n $vbdf && $vbdf != "$lbdf" ]]; then
        result "$p.add$n" fail detail="the VMM said the guest has it at $vbdf, L2 found it at $lbdf" "${fig[@]}"
    elif [[ -n $HP_WANT_SLOT && -z $(hp_l2 "$id.add" slot) ]]; then
        result "$p.add$n" fail detail="L2 has no hot-plug slot for $lbdf in /sys/bus/pci/slots" "${fig[@]}"
    else
        result "$p.add$n" pass "${fig[@]}"
    fi
    hp_wait_result "$id.$inner" 180 || echo "hp_cycle: no $id.$inner result from L2 within 180 s"
    declare -F hp_while_added >/dev/null && hp_while_added "$n" "$bdf"
    t0=$(now_ms)
    vmm_remove "$id" 2>"$HP_ERR"; rc=$?
    ms=$(( $(now_ms) - t0 ))
    hp_wait_result "$id.gone" 60
    fig=(device="$bdf" id="$id" remove_ms="$ms" l2_wait_ms="$(hp_l2 "$id.gone" wait_ms)" l1_driver="$(bdf_driver "$bdf")")
    if [[ $rc != 0 ]]; then
        result "$p.remove$n" fail detail="removing $id failed (status $rc): $(hp_err)" "${fig[@]}"
        return 1
    elif [[ $(hp_l2 "$id.gone" pass) != true ]]; then
        result "$p.remove$n" fail detail="L2 still has it: $(hp_l2 "$id.gone" detail) $(hp_last_lines)" "${fig[@]}"
        return 1
    elif [[ $(bdf_driver "$bdf") != vfio-pci ]]; then
        result "$p.remove$n" fail detail="after the removal $bdf is on '$(bdf_driver "$bdf")', not vfio-pci" "${fig[@]}"
    else
        result "$p.remove$n" pass "${fig[@]}"
    fi
    [[ $host == host ]] || return 0
    out=$(hp_host_use "$bdf"); rc=$?
    if [[ $rc == 0 ]]; then result "$p.host$n" pass device="$bdf" ${out#ok }
    else result "$p.host$n" fail detail="$bdf after its removal: $out" device="$bdf"; return 1; fi
}

# hp_finish: stop the VMM if it still runs (vmm_stop, then SIGTERM, then SIGKILL) and wait for run_l2.
hp_finish() {
    local i=0 pid
    hp_running && vmm_stop >/dev/null 2>&1
    while hp_running && ((i++ < 100)); do
        if [[ $i == 50 ]]; then pid=$(hp_vmm_pid); [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null; fi
        sleep 0.2
    done
    pid=$(hp_vmm_pid)
    [[ -n $pid ]] && hp_running && kill -KILL "$pid" 2>/dev/null
    wait "$HP_RUN_PID"
}

# hp_summary KEY: a figure of run_l2's NAME.vmm (exit_code, exited_by_itself...).
hp_summary() {
    /usr/bin/python3 -c 'import json, sys
try:
    v = json.load(open(sys.argv[1]))["vmm"].get(sys.argv[2])
except (OSError, ValueError, KeyError):
    v = None
print("" if v is None else str(v).lower() if isinstance(v, bool) else v)' "$LAB_OUT/$HP_RUN.summary.json" "$1"
}

# hp_final CHECK: after the VMM exited, both devices are back: on vfio-pci, not held, and usable by L1.
hp_final() {
    local bdf out bad="" figs=()
    for bdf in $HP_NVME $HP_NIC; do
        if [[ $(bdf_driver "$bdf") != vfio-pci ]]; then bad+="$bdf is on '$(bdf_driver "$bdf")', not vfio-pci; "; continue; fi
        out=$(hp_host_use "$bdf") || bad+="$bdf: $out; "
        figs+=("${bdf:5}=$out")
    done
    # The guest placed the hot-added devices' BARs itself, from the host bridge's windows: each must
    # have been mapped (passvm says "left unmapped" for one it could not place).
    local refused
    refused=$(grep -m1 'left unmapped' "$HP_CONSOLE" 2>/dev/null | cut -c10- | head -c 300)
    [[ -n $refused ]] && bad+="a BAR the guest placed was left unmapped: $refused; "
    if [[ -z $bad ]]; then result "$1" pass "${figs[@]}"; else result "$1" fail detail="$bad" "${figs[@]}"; fi
}
