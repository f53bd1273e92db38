# Boot-time claim, first half: runs before L1 loads its host drivers, as early boot
# would. Installs the persistent config (bhyve syntax) and the packaged udev rule, starts
# udevd and replays 00:03.0's "add" event as coldplug does. The stock 80-drivers.rules
# then loads nvme for that event, so this is the real race: our rule must mark the device
# for vfio-pci before nvme probes it. What happened is written to $LAB_OUT/early.env for
# host-bootclaim.sh, which reports it.

source "$LAB_DIR/scenarios/host-lib.sh"
BDF=0000:00:03.0
ENVF=$LAB_OUT/early.env
HOST=$(host_binary)
echo "host=$HOST" > "$ENVF"
[[ -n $HOST ]] || { echo "host-bootclaim: no passvm-host found" >&2; exit 1; }

mkdir -p /etc/passvm /etc/udev/rules.d
echo 'pptdevs="0/3/0"' > /etc/passvm/pptdevs.conf
sed "s|@PASSVM_HOST_BINARY@|$HOST|" "$LAB_DIR/../packaging/udev/60-passvm-pptdevs.rules.in" \
    > /etc/udev/rules.d/60-passvm-pptdevs.rules
echo "nvme_before=$(grep -c '^nvme ' /proc/modules)" >> "$ENVF"
echo "driver_before=$(bdf_driver $BDF)" >> "$ENVF"

# L1 runs in a chroot, where udevadm refuses to act unless told that is fine.
export SYSTEMD_IGNORE_CHROOT=1
/lib/systemd/systemd-udevd --debug > "$LAB_OUT/udevd.log" 2>&1 &
udevd=$!
for _ in $(seq 50); do udevadm control --ping 2>/dev/null && break; sleep 0.2; done
udevadm trigger --action=add /sys/bus/pci/devices/$BDF
udevadm settle --timeout=60
# Evidence that udev ran the claim, and in which order against the nvme module load.
log=$LAB_OUT/udevd.log
echo "claim_line=$(grep -n -m1 'boot-claim' "$log" | cut -d: -f1)" >> "$ENVF"
echo "nvme_load_line=$(grep -n -m1 -i "module 'nvme'" "$log" | cut -d: -f1)" >> "$ENVF"
echo "state=$(cat /run/passvm/reserved/$BDF 2>/dev/null || echo none)" >> "$ENVF"
echo "nvme_after=$(grep -c '^nvme ' /proc/modules)" >> "$ENVF"
echo "driver_after=$(bdf_driver $BDF)" >> "$ENVF"
# Only the claim is under test: udevd must not rename interfaces or load drivers later.
kill "$udevd"
wait "$udevd" 2>/dev/null
rm -f /etc/udev/rules.d/60-passvm-pptdevs.rules
cat "$ENVF"
