# The guest's console when nobody reads it. passvm's stdout is a FIFO whose reader stops reading (as a
# log collector that hung) once L2 starts its flood check: 1000 numbered lines on ttyS0. The FIFO's
# buffer is one page and passvm's console buffer 4 KiB (PASSVM_TEST_CONSOLE_BUFFER), so the stall
# reaches the guest within a few lines. passvm's messages go to a file.
# - stall.busy: SIGUSR2's report shows the UART's transmitter busy: the guest is held back.
# - stall.api: while stalled, `passvm remote info` answers: the control loop is not stuck behind the
#   console.
# - stall.signal: SIGTERM while stalled: passvm exits within 10 s with status 5, saying why; the NVMe
#   stays on vfio-pci and no process holds a VFIO group.
# - resume: a second VM, whose reader stalls in the flood for 10 s and then reads again: every flood
#   line arrives whole, once and in order (resume.lines); L2's flood and nvme checks pass.
# lab-expect: stall.busy stall.api stall.signal resume.lines resume.flood resume.nvme
# lab-timeout: 900

source "$LAB_DIR/scenarios/passvm-lib.sh"
pv_need_binary stall.busy
NVME=0000:00:03.0
bind_vfio $NVME || { result stall.busy fail detail="cannot bind $NVME to vfio-pci"; exit 1; }
D=$LAB_OUT/console  # logs; the FIFO and the socket in L1's own /tmp (the output directory is 9p)
R=$(mktemp -d /tmp/pvconsole.XXXXXX)
mkdir -p "$D"
SOCK=$R/api.sock
LINES=1000
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
vfio_holders() { ls -l /proc/[0-9]*/fd 2>/dev/null | grep -c '/dev/vfio/[0-9]'; }

# reader FIFO LOG FLAG stall|SECONDS: copies the FIFO to LOG until L2's flood starts, then touches FLAG
# and stops reading: for good (stall), or for SECONDS and then to the end.
reader() {
    /usr/bin/python3 - "$@" <<'PY' &
import fcntl, os, sys, time
fifo, log, flag, mode = sys.argv[1:5]
fd = os.open(fifo, os.O_RDONLY)
try:
    fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ: one page
except OSError:
    pass
seen, stalled = b"", False
with open(log, "wb") as out:
    while True:
        data = os.read(fd, 4096)
        if not data:
            break
        out.write(data)
        out.flush()
        if stalled:
            continue
        seen = (seen + data)[-300:]
        if b"L2MARK start flood" in seen:
            stalled = True
            open(flag, "w").close()
            if mode == "stall":
                while True:
                    time.sleep(3600)  # holds the FIFO open and reads nothing
            time.sleep(float(mode))
PY
    READER=$!
}

wait_for_file() {  # wait_for_file PATH SECONDS PID: until PATH exists, while PID runs
    local i
    for ((i = 0; i < $2 * 5; i++)); do
        [[ -e $1 ]] && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}

# --- stall: the reader never reads again.
rm -f "$R/fifo" "$D/stalled" "$SOCK"
mkfifo "$R/fifo"
reader "$R/fifo" "$D/stall.console" "$D/stalled" stall
PASSVM_TEST_CONSOLE_BUFFER=4096 "$PASSVM" --api-socket "$SOCK" -c 1 -m 512M -s 0,hostbridge \
    -s 3,passthru,$NVME -l com1,stdio --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
    --append "$(l2_append nvme,flood,hold lab.flood_lines=$LINES)" labvm \
    </dev/null >"$R/fifo" 2>"$D/stall.err" &
PV=$!
if ! wait_for_file "$D/stalled" 300 $PV; then
    detail="L2 never started its flood: $(tail -c 400 "$D/stall.console" | tr '\n' ' ')"
    for c in stall.busy stall.api stall.signal; do result $c fail detail="$detail"; done
    kill -KILL $PV $READER 2>/dev/null; wait $PV $READER 2>/dev/null
    exit 1
fi

busy=""
for ((i = 0; i < 30; i++)); do
    sleep 2
    kill -USR2 $PV 2>/dev/null
    sleep 0.5
    busy=$(grep -m1 -o 'transmitter busy[^,]*' "$D/stall.err")
    [[ -n $busy ]] && break
done
uart=$(grep 'IER 0x' "$D/stall.err" | tail -n 1 | head -c 300)
if [[ -n $busy ]]; then result stall.busy pass waited_s=$((i * 2 + 2)) uart="$uart"
else result stall.busy fail detail="no SIGUSR2 report showed the UART's transmitter busy within 75 s" uart="$uart"; fi

t0=$(now_ms)
info=$(timeout 20 "$PASSVM" remote --api-socket "$SOCK" info 2>&1); rc=$?
ms=$(( $(now_ms) - t0 ))
state=$(grep -o -m1 -E '^state +[A-Za-z]+' <<<"$info")
if [[ $rc == 0 && $state == *Running* ]]; then result stall.api pass ms=$ms state="$state"
else result stall.api fail detail="'passvm remote info' exited $rc after $ms ms while the console stalled: ${info:0:200}" ms=$ms; fi

t0=$(now_ms)
kill -TERM $PV
for ((i = 0; i < 150; i++)); do kill -0 $PV 2>/dev/null || break; sleep 0.1; done
if kill -0 $PV 2>/dev/null; then
    kill -KILL $PV; wait $PV 2>/dev/null
    result stall.signal fail detail="still running 15 s after SIGTERM while the console stalled"
else
    wait $PV; rc=$?
    ms=$(( $(now_ms) - t0 ))
    why=$(grep -E 'stopped by|terminating on signal' "$D/stall.err" | tail -n 1)
    fig=(exit_code=$rc stop_ms=$ms said="$why" driver="$(bdf_driver $NVME)")
    if [[ $rc != 5 ]]; then result stall.signal fail detail="exit status $rc after SIGTERM, expected 5" "${fig[@]}"
    elif [[ -z $why ]]; then result stall.signal fail detail="no line saying why it stopped" "${fig[@]}"
    elif [[ $(bdf_driver $NVME) != vfio-pci ]]; then result stall.signal fail detail="the NVMe left vfio-pci" "${fig[@]}"
    elif [[ $(vfio_holders) != 0 ]]; then result stall.signal fail detail="a process still holds a VFIO group" "${fig[@]}"
    elif ((ms > 10000)); then result stall.signal fail detail="took $ms ms to exit" "${fig[@]}"
    else result stall.signal pass "${fig[@]}"; fi
fi
kill $READER 2>/dev/null; wait $READER 2>/dev/null

# --- resume: the reader stalls for 10 s, then reads to the end.
rm -f "$R/fifo" "$D/stalled"
mkfifo "$R/fifo"
reader "$R/fifo" "$D/resume.console" "$D/stalled" 10
PASSVM_TEST_CONSOLE_BUFFER=4096 timeout 600 "$PASSVM" -c 1 -m 512M -s 0,hostbridge -s 3,passthru,$NVME \
    -l com1,stdio --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
    --append "$(l2_append flood,nvme lab.flood_lines=$LINES)" labvm </dev/null >"$R/fifo" 2>"$D/resume.err"
rc=$?
wait $READER 2>/dev/null
got=$(tr -d '\r' <"$D/resume.console" | awk -v n=$LINES '
    $1 == "L2FLOOD" { if ($2 != want + 1) { bad = bad " " $2 " after " want }
                      if ($3 != "0123456789abcdefghijklmnopqrstuvwxyz" || NF != 3) { bad = bad " line " $2 " cut" }
                      want = $2; count++ }
    END { if (want != n) bad = bad " last " want; printf "%d%s", count, (bad == "" ? "" : ";" substr(bad, 1, 200)) }')
stalled=$([[ -e $D/stalled ]] && echo yes || echo no)
if [[ $rc != 0 ]]; then result resume.lines fail detail="passvm exited $rc: $(tail -c 300 "$D/resume.err" | tr '\n' ' ')"
elif [[ $stalled != yes ]]; then result resume.lines fail detail="the reader never saw the flood start"
elif [[ $got != "$LINES" ]]; then result resume.lines fail detail="flood lines out of order or missing: ${got#*;}" lines="${got%%;*}"
else result resume.lines pass lines="$got" stalled_s=10; fi
for c in flood nvme; do
    r=$(grep -o "\"check\":\"$c\",\"pass\":[a-z]*" "$D/resume.console" | head -n 1)
    if [[ ${r##*:} == true ]]; then result resume.$c pass
    else result resume.$c fail detail="L2's $c check: ${r:-no result}"; fi
done
