#!/bin/busybox sh
# /init of the Strata node VM: PID 1 of the initramfs, run by busybox sh.
#
# The host shares a control folder (9p tag "nodevmctl") that holds
#   config   shell assignments: NODEVM_UDEV NODEVM_NDISKS NODEVM_BOOT_MODULES
#            NODEVM_9P_CACHE NODEVM_INTERACTIVE NODEVM_STTY
#   shares   one line per host folder: TAG MODE GUESTDIR
#   disks    the declared disks (for the tests; see README.md)
#   cmd.sh   the command: environment, cd, exec
# and receives
#   stages   boot stages with the guest's uptime (timings; "synced" once the
#            command's writes are on the disks, before it leaves)
#   rc       the command's exit status; its absence tells the host the VM died
export PATH=/usr/sbin:/usr/bin HOME=/root TERM=linux
ctl=/run/nodevm
say() { echo "nodevm-init: $*" > /dev/ttyS0; }
die() { say "$*"; sync; poweroff -f; }
stage() { echo "$1 $(cut -d' ' -f1 /proc/uptime)" >> "$ctl/stages"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mkdir -p "$ctl" /run/lock/lvm /run/lvm /run/udev
ln -sf /proc/self/fd /dev/fd
ln -sf fd/0 /dev/stdin; ln -sf fd/1 /dev/stdout; ln -sf fd/2 /dev/stderr
hostname nodevm
ip link set lo up 2>/dev/null

modprobe -a virtio_pci virtio_console 9pnet_virtio 9p || die "cannot load the virtio/9p modules"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none nodevmctl "$ctl" ||
  die "cannot mount the control share"
. "$ctl/config" || die "cannot read $ctl/config"
stage init

# disk drivers now; xfs, ext4, dm-thin-pool, ... are loaded on first use
# through the kernel's request_module -> /sbin/modprobe
modprobe -a $NODEVM_BOOT_MODULES || say "some of the modules '$NODEVM_BOOT_MODULES' did not load"
stage modules

if [ "$NODEVM_UDEV" = 1 ]; then
  /usr/lib/systemd/systemd-udevd --daemon --resolve-names=never 2>/dev/null || die "systemd-udevd did not start"
  udevadm trigger --action=add --subsystem-match=block --subsystem-match=nvme
  stage udev
else
  # without udev, LVM and libdevmapper must create the /dev nodes themselves
  printf 'activation { udev_sync = 0 udev_rules = 0 }\ndevices { obtain_device_list_from_udev = 0 }\n' \
    >> /etc/lvm/lvm.conf
fi

# NVMe namespaces and SATA links are probed asynchronously: wait until every
# declared disk is there, and only then let udev settle
count_disks() {
  n=0
  for b in /sys/block/*; do
    case ${b##*/} in loop*|ram*|dm-*|sr*|md*|zram*|nbd*) ;; *) n=$((n + 1));; esac
  done
}
i=0
while count_disks; [ "$n" -lt "$NODEVM_NDISKS" ]; do
  i=$((i + 1))
  [ $i -le 1200 ] || die "only $n of $NODEVM_NDISKS disks appeared within 60 s"
  sleep 0.05
done
stage disks
if [ "$NODEVM_UDEV" = 1 ]; then
  udevadm settle --timeout=60 || say "udevadm settle timed out"
  stage udev-settle
fi

while read -r tag mode dir; do
  [ -n "$tag" ] || continue
  mkdir -p "$dir" &&
    mount -t 9p -o "trans=virtio,version=9p2000.L,msize=262144,cache=$NODEVM_9P_CACHE,$mode" "$tag" "$dir" ||
    die "cannot mount share $tag at $dir"
done < "$ctl/shares"
stage shares

if [ "$NODEVM_INTERACTIVE" = 1 ]; then
  tty=/dev/ttyS1
  # hold the tty open: its settings (the window size) would be reset when
  # the last descriptor closes
  exec 9<>$tty
  stty -F $tty sane
  [ -z "$NODEVM_STTY" ] || stty -F $tty $NODEVM_STTY
  setsid -c /bin/bash "$ctl/cmd.sh" <$tty >$tty 2>&1 9>&-
else
  # stdout/stderr travel over two virtio-serial ports (writes block until the
  # host has taken the data, so nothing is lost at power-off)
  out= err=
  for p in /sys/class/virtio-ports/*; do
    case $(cat "$p/name" 2>/dev/null) in
      nodevm.stdout) out=/dev/${p##*/};;
      nodevm.stderr) err=/dev/${p##*/};;
    esac
  done
  [ -n "$out" ] && [ -n "$err" ] || die "virtio-serial ports for stdout/stderr not found"
  /bin/bash "$ctl/cmd.sh" </dev/null >"$out" 2>"$err"
fi
rc=$?
stage command
awk '/^(MemTotal|MemAvailable):/{printf "%s %d MiB ", $1, $2/1024} END{print ""}' /proc/meminfo > "$ctl/meminfo"
echo $rc > "$ctl/rc.tmp" && mv "$ctl/rc.tmp" "$ctl/rc"
# a guest still up 20 s from here hangs in sync (or in leaving): it dumps its blocked
# tasks and every CPU's backtrace to the console, which the host prints on a timeout
( sleep 20; echo 8 > /proc/sys/kernel/printk; echo w > /proc/sysrq-trigger
  echo l > /proc/sysrq-trigger ) </dev/null >/dev/null 2>&1 &
sync
stage synced
# leave through qemu's isa-debug-exit port (0xf4), not through the kernel's power-off:
# everything the command made is on the host now, and under TCG the kernel's device
# shutdown now and then never finished (README: pitfalls); poweroff is the fallback
printf '\000' | dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc 2>/dev/null
poweroff -f
