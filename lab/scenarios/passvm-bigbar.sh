# A device with a 64 GiB BAR (ivshmem-plain at L1 00:09.0, its memory a sparse file in L0) passed
# through by passvm: the BAR gets a place in the guest's 64-bit window (above RAM, sized from the
# physical address bits), L2 writes a pattern at its start and near its end through sysfs, and L1
# reads the pattern back from the device after passvm is gone. maptime: how long passvm took to map
# the BAR into itself, into the guest, and (in the background) into the IOMMU (its -v lines).
# Peer-to-peer DMA, with edu (00:06.0) in the same guest: edu's DMA engine writes to the ivshmem
# BAR's guest address. passvm maps BARs into the IOMMU by default, so the bytes land (pvbig.p2p);
# with p2p=off on the ivshmem slot the IOMMU blocks the write (pvnop2p.p2p) and L1 logs DMAR faults
# for 00:06.0 (pvnop2p.dmar).
# subpage: ivshmem's 256-byte BAR0 is mapped as its whole page (no traps); L2's write to its interrupt
# mask register reaches the device (L1 reads it back in l1read).
# lab-expect: pvbig.vmm pvbig.lspci pvbig.bigbar pvbig.p2p pvbig.l1read pvbig.maptime pvbig.subpage pvnop2p.vmm pvnop2p.p2p pvnop2p.dmar
# lab-timeout: 1200
# lab-dma-faults: deliberate

source "$LAB_DIR/scenarios/passvm-lib.sh"
pv_need_binary pvbig.vmm
BIG=0000:00:09.0
EDU=0000:00:06.0
for bdf in $BIG $EDU; do
    bind_vfio $bdf || { result pvbig.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
done
NONCE=$(( (RANDOM << 30 | RANDOM << 15 | RANDOM) + 1 ))

run_l2 pvbig --timeout 600 -- \
    "$PASSVM" -v -c 2 -m 512M -s 0,hostbridge -s 6,passthru,$EDU -s 9,passthru,$BIG \
    -l com1,stdio --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
    --append "$(l2_append lspci,bigbar,p2p lab.expect_pci=1af4:1110,1234:11e8 lab.bigbar=$NONCE lab.p2p=on)" labvm
rc=$?

LABCHECK=$(dirname "$L2_INITRD")/labcheck
seen=$("$LABCHECK" bigbarverify $BIG $NONCE 2>&1)
if [[ $seen == match ]]; then result pvbig.l1read pass nonce=$NONCE
else result pvbig.l1read fail detail="L1 reads BAR2 of $BIG back: $seen (nonce $NONCE)"; fi

console=$LAB_OUT/pvbig.console
host_ms=$(grep -o 'BAR 2 (64 GiB) mmapped into passvm in [0-9.]* ms' "$console" | grep -o '[0-9.]* ms' | head -n 1)
guest_line=$(grep -o 'BAR 2 (64 GiB) mapped into the guest at [0-9a-fx]* in [0-9.]* ms' "$console" | head -n 1)
guest_ms=$(grep -o '[0-9.]* ms' <<<"$guest_line")
at=$(grep -o 'at 0x[0-9a-f]*' <<<"$guest_line" | cut -d' ' -f2)
iommu_ms=$(grep -o 'BAR 2 at 0x[0-9a-f]* (64 GiB) open to peer-to-peer DMA after [0-9.]* ms' "$console" | grep -o '[0-9.]* ms' | head -n 1)
if [[ -n $host_ms && -n $guest_ms && -n $iommu_ms ]]; then
    result pvbig.maptime pass host_mmap_ms="${host_ms% ms}" guest_map_ms="${guest_ms% ms}" iommu_map_ms="${iommu_ms% ms}" guest_address="$at"
else
    result pvbig.maptime fail detail="passvm -v did not report mapping BAR 2 (64 GiB) into itself, the guest and the IOMMU" host="$host_ms" guest="$guest_ms" iommu="$iommu_ms"
fi
sub=$(grep -o 'BAR 0 (256 bytes) mapped into the guest at 0x[0-9a-f]* in [0-9.]* ms ([0-9]* memory slots, [0-9]* traps' "$console" | head -n 1)
if [[ $sub == *"(1 memory slots, 0 traps"* ]]; then result pvbig.subpage pass line="$sub"
else result pvbig.subpage fail detail="ivshmem's 256-byte BAR0 was not mapped as one page: '$sub'"; fi

edu_faults() { dmesg | grep -c 'DMAR:.*device \[00:06.0\]'; }
before=$(edu_faults)
run_l2 pvnop2p --timeout 600 -- \
    "$PASSVM" -c 2 -m 512M -s 0,hostbridge -s 6,passthru,$EDU -s 9,passthru,$BIG,p2p=off \
    -l com1,stdio --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
    --append "$(l2_append p2p lab.expect_pci=1af4:1110,1234:11e8 lab.p2p=off)" labvm
rc2=$?
new=$(( $(edu_faults) - before ))
last=$(dmesg | grep 'DMAR:.*device \[00:06.0\]' | tail -n 2 | tr '\n' ' ')
if ((new > 0)); then result pvnop2p.dmar pass faults=$new last="$last"
else result pvnop2p.dmar fail detail="no DMAR fault for 00:06.0 in L1's dmesg: edu's write to the BAR was not seen by the IOMMU"; fi
((rc == 0)) && rc=$rc2
exit $rc
