# Confinement: passvm without root, and seccomp filters on every thread.
# - reserve: `passvm reserve --user pvuser` binds the NVMe (00:03.0) to vfio-pci and gives pvuser its
#   /dev/vfio/GROUP.
# - check: `passvm check --user pvuser` names what pvuser still lacks (/dev/kvm, RLIMIT_MEMLOCK for the
#   guest) and, once the lab has fixed that the way the messages say, passes those lines.
# - user: passvm run by pvuser itself (no capability at all) boots L2, whose nvme check passes; while the
#   guest runs every passvm thread has Seccomp: 2, pvuser's uid and CapEff 0.
# - kill: with the test hook armed, SIGUSR2 once L2's nvme I/O started makes a vCPU call socket(): passvm exits
#   with status 6 naming the call and the vCPU thread, and leaves no VFIO file open.
# - nopin: pvuser with a locked-memory limit below the guest's RAM: guest RAM is pinned beside the guest's
#   start, so the guest runs when the pin fails; passvm stops it, says why (RLIMIT_MEMLOCK) with status 1,
#   and leaves the NVMe free on vfio-pci, as after any failed setup.
# - root: passvm started by root with --user pvuser gets the NVMe the killed one left, boots L2 and its
#   nvme check passes; its threads as for user.
# - api: root starts passvm with --user pvuser and --api-socket, where every VM after the first is built
#   as pvuser. While pvuser cannot open /dev/kvm, passvm refuses at once, naming it, and leaves no socket
#   and the NVMe free. Once it can, the socket is pvuser's; L2 boots, checks the NVMe and powers off;
#   pvuser's `passvm remote boot` builds the VM again as pvuser (uid, no capabilities), L2's nvme check
#   passes a second time, and pvuser's `shutdown-vmm` ends passvm with status 0.
# Then release gives the NVMe back to L1's nvme driver.
# lab-expect: conf.reserve conf.check conf.checkfixed conf.user.vmm conf.user.nvme conf.user.ticker conf.user.threads conf.kill conf.nopin conf.root.vmm conf.root.nvme conf.root.ticker conf.root.threads
# lab-expect: conf.api.refused conf.api.socket conf.api.first conf.api.reboot conf.api.exit conf.release
# lab-timeout: 1500

source "$LAB_DIR/scenarios/passvm-lib.sh"
pv_need_binary conf.user.vmm
NVME=0000:00:03.0
U=pvuser
lab_reset_bindings
getent passwd $U >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin $U
uid=$(id -u $U)
gpasswd -d $U kvm >/dev/null 2>&1 || true

# What pvuser runs must be readable by pvuser: the kernel and initrd are under /root.
D=/tmp/confine
mkdir -p "$D/home"
cp "$L2_KERNEL" "$D/bzImage"
cp "$L2_INITRD" "$D/initrd"
chmod 755 "$D"; chmod 644 "$D/bzImage" "$D/initrd"; chown $U "$D/home"
BOOT=(--kernel "$D/bzImage" --initrd "$D/initrd")
PV=("$PASSVM" -c 2 -m 512M -s 0,hostbridge -s 3,passthru,$NVME -l com1,stdio)
group=$(basename "$(readlink "/sys/bus/pci/devices/$NVME/iommu_group")")

out=$("$PASSVM" reserve --user $U $NVME 2>&1); rc=$?
owner=$(stat -c %U "/dev/vfio/$group" 2>/dev/null)
mode=$(stat -c %a "/dev/vfio/$group" 2>/dev/null)
fig=(rc="$rc" owner="$owner" mode="$mode" driver="$(bdf_driver $NVME)" said="$(echo "$out" | tail -n 2 | tr '\n' ' ')")
if [[ $rc == 0 && $owner == "$U" && $(bdf_driver $NVME) == vfio-pci ]]; then result conf.reserve pass "${fig[@]}"
else result conf.reserve fail detail="expected 00:03.0 on vfio-pci with /dev/vfio/$group owned by $U" "${fig[@]}"; fi

# check: pvuser cannot open /dev/kvm (L1 leaves it root's, 0600: no udev rule gives it to the kvm group)
# and has the default 8 MiB memlock limit.
rm -f /etc/security/limits.d/passvm-lab.conf
kvm_mode=$(stat -c '%U:%G %a' /dev/kvm)
"$PASSVM" check --user $U --memory 512M $NVME >"$LAB_OUT/check1.txt" 2>&1; rc=$?
said=$(grep -A1 -E '^\[fail\] (/dev/kvm|memlock)' "$LAB_OUT/check1.txt" | tr '\n' ' ' | head -c 600)
if [[ $rc != 0 ]] && grep -A1 '^\[fail\] /dev/kvm' "$LAB_OUT/check1.txt" | grep -q 'fix:' \
        && grep -A1 '^\[fail\] memlock' "$LAB_OUT/check1.txt" | grep -q 'fix:.*memlock'; then
    result conf.check pass rc="$rc" kvm="$kvm_mode" said="$said"
else result conf.check fail detail="expected failing /dev/kvm and memlock lines, each with its fix" rc="$rc" said="$said"; fi
# The fixes the messages name: the udev rule's effect on /dev/kvm and the kvm group, a limits.d line.
chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
usermod -aG kvm $U
echo "$U hard memlock unlimited" >/etc/security/limits.d/passvm-lab.conf
echo "$U soft memlock unlimited" >>/etc/security/limits.d/passvm-lab.conf
"$PASSVM" check --user $U --memory 512M $NVME >"$LAB_OUT/check2.txt" 2>&1; rc=$?
bad=$(grep -E '^\[fail\]' "$LAB_OUT/check2.txt" | grep -i -E 'kvm|memlock|device|vfio' | head -n 3 | tr '\n' ' ')
if [[ -z $bad ]]; then result conf.checkfixed pass rc="$rc"
else result conf.checkfixed fail detail="still failing after the fixes: $bad" rc="$rc"; fi

# snap_threads RUN: once L2 of run_l2 RUN is past its nvme check (the device in use, MSI-X on) and ticking
# for a few seconds, every thread of the running passvm: comm, Seccomp, uid and effective capabilities,
# one line each, in $LAB_OUT/RUN.threads, and each status whole in RUN.threads.log. Each status is read
# once, with shell builtins: L1's one CPU is busy with L2, where a process started per thread (cat, awk)
# made one snapshot take 11 s, past the guest's poweroff, and a vCPU thread exited between two reads of
# its status. A thread gone before its status is read is logged and left out (a snapshot that late then
# misses the thread classes threads_result asks for).
snap_threads() {
    local name=$1 con=$LAB_OUT/$1.console pid="" i t line tname s u c text
    local log=$LAB_OUT/$1.threads.log
    for ((i = 0; i < 3000; i++)); do
        grep -q 'L2MARK start ticker' "$con" 2>/dev/null && break
        [[ -e $LAB_OUT/$1.summary.json ]] && return  # run_l2 ended: passvm never got that far
        sleep 0.2
    done
    local pids start=$EPOCHREALTIME
    pids=$(pgrep -x "$(basename "$PASSVM" | cut -c1-15)")
    echo "pgrep: $pids" >"$log"
    for p in $pids; do
        [[ -e /proc/$p/task ]] && pid=$p
    done
    [[ -n $pid ]] || return
    local lines
    for t in /proc/"$pid"/task/*; do
        tname="" s="" u="" c="" text="" lines=()
        # mapfile reads the file straight through. `read` goes back (lseek) to the end of each line it
        # took, and /proc makes the status anew at each read: a thread whose State changed length between
        # two reads ("S (sleeping)" then "R (running)") came out with a byte lost ("id:" for "Uid:").
        mapfile -t lines 2>/dev/null <"$t/status" || true  # the thread may be gone
        for line in "${lines[@]}"; do
            text+="$line"$'\n'
            case $line in
                Name:*) tname=${line#Name:$'\t'} ;;
                Seccomp:*) s=${line#Seccomp:$'\t'} ;;
                Uid:*) u=${line#Uid:$'\t'} u=${u%%$'\t'*} ;;
                CapEff:*) c=${line#CapEff:$'\t'} ;;
            esac
        done
        if [[ -z $tname ]]; then
            echo "task ${t##*/}: gone before its status was read" >>"$log"
            continue
        fi
        printf 'task %s\n%s' "${t##*/}" "$text" >>"$log"
        echo "$tname $s $u $c"
    done >"$LAB_OUT/$name.threads"
    echo "snapshot of $pid's threads: $(( (${EPOCHREALTIME/./} - ${start/./}) / 1000 )) ms" >>"$log"
}

# threads_result CHECK NAME: every thread confined (Seccomp 2), running as pvuser, without capabilities,
# and the thread classes all there.
threads_result() {
    local f=$LAB_OUT/$2.threads
    if [[ ! -s $f ]]; then result "$1" fail detail="no thread snapshot: passvm was not running when L2 began ticking"; return; fi
    local n names bad
    n=$(wc -l <"$f")
    names=$(awk '{print $1}' "$f" | sed 's/[0-9]*$//' | sort -u | tr '\n' ',')
    bad=$(awk -v u="$uid" '$2 != 2 || $3 != u || $4 != "0000000000000000"' "$f" | head -n 3 | tr '\n' ';')
    if [[ -n $bad ]]; then result "$1" fail detail="threads not confined, not $U, or with capabilities: $bad" threads="$n" names="$names"
    elif ! grep -q '^vcpu0 ' "$f" || ! grep -q '^pv-irq ' "$f" || ! grep -q '^pv-signals ' "$f"; then
        result "$1" fail detail="expected vcpu0, pv-irq and pv-signals among the threads" threads="$n" names="$names"
    else result "$1" pass threads="$n" names="$names"; fi
}

# As pvuser from the start: no capability, the limits a login would give it (limits.d above).
snap_threads conf.user &
run_l2 conf.user --timeout 600 -- \
    prlimit --memlock=unlimited:unlimited \
    setpriv --reuid=$U --regid=$U --init-groups --inh-caps=-all --bounding-set=-all \
    env HOME="$D/home" "${PV[@]}" "${BOOT[@]}" --append "$(l2_append nvme,ticker lab.tick_s=10)" labvm
wait
threads_result conf.user.threads conf.user

# The test hook: SIGUSR2 once L2's nvme check has started makes a vCPU call socket(). L2 ticks after the
# check, so that the signal finds it running even when the check is done first: the check can take well
# under the time it takes to see it start (12-01, a CI run: 61 ms of I/O, and L2 had powered off before
# the signal came, a clean exit with status 0).
con=$LAB_OUT/kill.console
PASSVM_TEST_FORBIDDEN_SYSCALL=1 "${PV[@]}" "${BOOT[@]}" --append "$(l2_append nvme,ticker lab.tick_s=60)" labvm \
    </dev/null >"$con" 2>&1 &
pid=$!
for ((i = 0; i < 6000; i++)); do
    grep -q 'L2MARK start nvme' "$con" && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
done
kill -USR2 $pid
for ((i = 0; i < 300; i++)); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
kill -0 $pid 2>/dev/null && { kill -KILL $pid; sleep 1; }
wait $pid; rc=$?
said=$(grep 'seccomp:' "$con" | head -n 1)
held=$(ls -l /proc/*/fd 2>/dev/null | grep -c "/dev/vfio/$group")
fig=(rc="$rc" said="$said" driver="$(bdf_driver $NVME)" vfio_fds_left="$held")
if [[ $rc != 6 ]]; then result conf.kill fail detail="exit status $rc, expected 6" "${fig[@]}"
elif ! [[ $said == *"thread 'vcpu"*"socket (41)"* ]]; then result conf.kill fail detail="no message naming the vCPU thread and socket (41)" "${fig[@]}"
elif [[ $held != 0 || $(bdf_driver $NVME) != vfio-pci ]]; then result conf.kill fail detail="the device was not left free on vfio-pci" "${fig[@]}"
else result conf.kill pass "${fig[@]}"; fi

con=$LAB_OUT/nopin.console
prlimit --memlock=67108864:67108864 \
    setpriv --reuid=$U --regid=$U --init-groups --inh-caps=-all --bounding-set=-all \
    env HOME="$D/home" timeout 600 "${PV[@]}" -v "${BOOT[@]}" --append "$(l2_append nvme)" labvm </dev/null >"$con" 2>&1
rc=$?
said=$(grep -m1 'RLIMIT_MEMLOCK' "$con" | cut -c1-300)
held=$(ls -l /proc/*/fd 2>/dev/null | grep -c "/dev/vfio/$group")
fig=(rc="$rc" said="$said" driver="$(bdf_driver $NVME)" vfio_fds_left="$held")
if [[ $rc != 1 ]]; then result conf.nopin fail detail="exit status $rc, expected 1" "${fig[@]}"
elif [[ -z $said ]]; then result conf.nopin fail detail="no message naming RLIMIT_MEMLOCK" "${fig[@]}"
elif [[ $held != 0 || $(bdf_driver $NVME) != vfio-pci ]]; then result conf.nopin fail detail="the device was not left free on vfio-pci" "${fig[@]}"
else result conf.nopin pass "${fig[@]}"; fi

# Started by root, dropping to pvuser once everything is open; the NVMe is the one the killed passvm
# left behind, so this run also shows it was left usable.
gpasswd -d $U kvm >/dev/null 2>&1
rm -f /etc/security/limits.d/passvm-lab.conf
snap_threads conf.root &
run_l2 conf.root --timeout 600 -- "${PV[@]}" --user $U "${BOOT[@]}" --append "$(l2_append nvme,ticker lab.tick_s=10)" labvm
wait
threads_result conf.root.threads conf.root

# --user with --api-socket. pvuser is out of the kvm group again (above): the VMs built after root is
# given up could not open /dev/kvm, so passvm refuses before it starts anything.
A=$D/api
mkdir -p "$A" && chown $U "$A" && chmod 0700 "$A"  # the socket's directory is the user's, as the README says
SOCK=$A/passvm.sock
API_RUN=("${PV[@]}" --user $U --api-socket "$SOCK" "${BOOT[@]}" --append "$(l2_append nvme)" labvm)
con=$LAB_OUT/api.refused.console
timeout 120 "${API_RUN[@]}" </dev/null >"$con" 2>&1; rc=$?
said=$(grep -m1 '/dev/kvm' "$con" | cut -c1-300)
held=$(ls -l /proc/*/fd 2>/dev/null | grep -c "/dev/vfio/$group")
fig=(rc="$rc" said="$said" driver="$(bdf_driver $NVME)" vfio_fds_left="$held")
if [[ $rc != 1 ]]; then result conf.api.refused fail detail="exit status $rc, expected 1" "${fig[@]}"
elif [[ -z $said ]] || ! grep -q 'usermod -aG kvm' "$con"; then
    result conf.api.refused fail detail="no message naming /dev/kvm and its fix" "${fig[@]}"
elif [[ -e $SOCK ]]; then result conf.api.refused fail detail="the socket was left behind" "${fig[@]}"
elif [[ $held != 0 || $(bdf_driver $NVME) != vfio-pci ]]; then result conf.api.refused fail detail="the device was not left free on vfio-pci" "${fig[@]}"
else result conf.api.refused pass "${fig[@]}"; fi

usermod -aG kvm $U
# pvu ARGS...: passvm's client, run by pvuser on its own socket.
pvu() { setpriv --reuid=$U --regid=$U --init-groups --inh-caps=-all --bounding-set=-all \
            timeout 120 "$PASSVM" remote --api-socket "$SOCK" "$@"; }
api_state() { pvu --json info 2>/dev/null | /usr/bin/python3 -c 'import json, sys
try:
    print(json.load(sys.stdin).get("state", ""))
except ValueError:
    print("?")'; }
passes() { grep -c '"check":"nvme","pass":true' "$con" 2>/dev/null; }
# wait_shutdown N: until L2's nvme check has passed N times and the VM is Shutdown (L2 powered off).
wait_shutdown() {
    local i
    for ((i = 0; i < 1200; i++)); do
        [[ $(passes) -ge $1 && $(api_state) == Shutdown ]] && return 0
        kill -0 $pid 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}
con=$LAB_OUT/api.console
"${API_RUN[@]}" </dev/null >"$con" 2>&1 &
pid=$!
# The socket is bound as root and then given to pvuser: it answers pvuser once it is theirs.
state=""
for ((i = 0; i < 300; i++)); do
    state=$(api_state)
    [[ $state =~ ^(Created|Running|Shutdown)$ ]] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.2
done
owner=$(stat -c '%U %a' "$SOCK" 2>/dev/null)
if [[ $owner == "$U 600" && $state =~ ^(Created|Running|Shutdown)$ ]]; then result conf.api.socket pass owner="$owner" state="$state"
else result conf.api.socket fail detail="the socket should be $U's, mode 600, and answer $U" owner="$owner" state="$state"; fi

if wait_shutdown 1; then result conf.api.first pass nvme_passes="$(passes)"
else result conf.api.first fail detail="L2's first boot did not pass its nvme check and power off" nvme_passes="$(passes)" state="$(api_state)" said="$(grep -m1 '^passvm:' "$con")"; fi

# The second VM is built after root was given up: it opens /dev/kvm, the VFIO group and the kernel as pvuser.
out=$(pvu boot 2>&1); brc=$?
uid_now=$(awk '/^Uid:/ {print $2 "/" $3}' /proc/$pid/status 2>/dev/null)
cap_now=$(awk '/^CapEff:/ {print $2}' /proc/$pid/status 2>/dev/null)
if wait_shutdown 2 && [[ $brc == 0 && $uid_now == "$uid/$uid" && $cap_now == 0000000000000000 ]]; then
    result conf.api.reboot pass nvme_passes="$(passes)" uid="$uid_now"
else
    result conf.api.reboot fail detail="pvuser's boot exited $brc ($out); L2 should pass its nvme check again with passvm as $U without capabilities" \
        nvme_passes="$(passes)" uid="$uid_now" cap="$cap_now" state="$(api_state)" said="$(grep '^passvm:' "$con" | tail -n 2 | tr '\n' ' ')"
fi

out=$(pvu shutdown-vmm 2>&1)
for ((i = 0; i < 300; i++)); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
kill -0 $pid 2>/dev/null && { kill -KILL $pid; sleep 1; }
wait $pid; rc=$?
held=$(ls -l /proc/*/fd 2>/dev/null | grep -c "/dev/vfio/$group")
fig=(rc="$rc" driver="$(bdf_driver $NVME)" vfio_fds_left="$held" socket_left="$([[ -e $SOCK ]] && echo yes || echo no)")
if [[ $rc != 0 ]]; then result conf.api.exit fail detail="exit status $rc after shutdown-vmm ($out)" "${fig[@]}"
elif [[ $held != 0 || $(bdf_driver $NVME) != vfio-pci ]]; then result conf.api.exit fail detail="the device was not left free on vfio-pci" "${fig[@]}"
else result conf.api.exit pass "${fig[@]}"; fi
gpasswd -d $U kvm >/dev/null 2>&1

chown root:root /dev/kvm && chmod 0600 /dev/kvm  # as L1 had it
out=$("$PASSVM" release $NVME 2>&1); rrc=$?
sleep 1
owner=$(stat -c %U "/dev/vfio/$group" 2>/dev/null || echo gone)
if [[ $rrc == 0 && $(bdf_driver $NVME) == nvme && $owner != "$U" ]]; then result conf.release pass driver=nvme group_file="$owner"
else result conf.release fail detail="after release: driver $(bdf_driver $NVME), /dev/vfio/$group owner $owner: $out"; fi
grep -q '"check":"nvme","pass":true' "$LAB_OUT/conf.root.console" 2>/dev/null
