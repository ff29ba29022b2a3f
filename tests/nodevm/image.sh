#!/usr/bin/env bash
# image.sh DEST_DIR - build the node VM's kernel + initramfs into DEST_DIR
# (kernel, initrd.img, info) from Debian 12 packages. Called by `nodevm build`,
# which holds the cache lock and has installed the host packages listed in
# NODEVM_IMAGE_PKGS. Downloads and extracted packages are kept under
# $NODEVM_CACHE/debs and $NODEVM_CACHE/pkgroot.
#
# The sha256 of this file and of init.sh names the image: editing either one
# makes the next `nodevm run` rebuild.
set -euo pipefail

DEST=${1:?usage: image.sh DEST_DIR}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${NODEVM_CACHE:?}
PROG=nodevm-build

# Host packages whose programs (everything in /bin, /sbin, /usr/bin, /usr/sbin)
# are copied into the image with their shared libraries; busybox provides the
# rest (sh, awk, ip, vi, ...). GNU coreutils shadow busybox on purpose: lvm's
# fsadm needs GNU readlink/df.
IMAGE_PKGS=${NODEVM_IMAGE_PKGS:?}
# left out: xfs_scrub alone would pull in 36 MiB of ICU
SKIP_PROGRAMS='xfs_scrub xfs_scrub_all'

# Kernel modules in the image (dependencies are added by modprobe).
MODULES="virtio_pci virtio_console 9pnet_virtio 9p
 nvme ahci sd_mod virtio_blk virtio_scsi loop virtio_net
 dm-mod dm-snapshot dm-thin-pool dm-mirror dm-zero dm-cache dm-cache-smq dm-writecache dm-integrity
 ext4 xfs crc32c_generic crc32c-intel ${NODEVM_EXTRA_MODULES:-}"

# udev rules copied in: device naming and by-path/by-id links, plus the
# device-mapper/LVM rules (no 69-lvm autoactivation: nothing activates a VG
# behind the test's back)
UDEV_RULES='50-udev-default 60-block 60-persistent-storage 80-drivers'
DM_RULES='55-dm 56-lvm 60-persistent-storage-dm 95-dm-notify'

log() { echo "$PROG: $*" >&2; }
die() { echo "$PROG: error: $*" >&2; exit 1; }

# fetch_deb PKG -> path of PKG's .deb in the cache (apt-get download)
fetch_deb() {
  local pkg=$1 dir=$CACHE/debs f
  mkdir -p "$dir"
  f=$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n1)
  if [ -z "$f" ]; then
    log "downloading $pkg"
    if ! (cd "$dir" && apt-get download -q "$pkg" >/dev/null 2>&1); then
      apt-get update -qq >/dev/null 2>&1 || true
      (cd "$dir" && apt-get download -q "$pkg" >/dev/null) || die "apt-get download $pkg failed"
    fi
    f=$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n1)
  fi
  [ -n "$f" ] || die "no .deb for $pkg"
  printf '%s\n' "$f"
}

# extract PKG's .deb once into $CACHE/pkgroot/PKG; prints that folder
extract_deb() {
  local pkg=$1 deb dir
  deb=$(fetch_deb "$pkg")
  dir=$CACHE/pkgroot/$(basename "$deb" .deb)
  if [ ! -f "$dir/.extracted" ]; then
    rm -rf "$dir"; mkdir -p "$dir"
    dpkg-deb -x "$deb" "$dir"
    touch "$dir/.extracted"
  fi
  printf '%s\n' "$dir"
}

kernel_package() {
  local p=${NODEVM_KERNEL_PKG:-}
  if [ -z "$p" ]; then
    p=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    if [ -z "$p" ]; then
      apt-get update -qq >/dev/null 2>&1 || true
      p=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    fi
  fi
  [ -n "$p" ] || die "cannot resolve the kernel package behind linux-image-amd64 (set NODEVM_KERNEL_PKG)"
  printf '%s\n' "$p"
}

# kernel_image KROOT KVER OUT: the kernel qemu boots. The bzImage's payload
# decompressed to an ELF vmlinux boots through the PVH entry point, which spares
# the guest the XZ decompression (3-5 s under TCG); the bzImage is the fallback.
# Prints the format chosen.
kernel_image() {
  local kroot=$1 kver=$2 out=$3 vz off
  vz=$kroot/boot/vmlinuz-$kver
  if grep -q '^CONFIG_PVH=y' "$kroot/boot/config-$kver" 2>/dev/null &&
     off=$(LC_ALL=C grep -abo -m1 $'\xfd7zXZ\x00' "$vz" | head -n1 | cut -d: -f1) && [ -n "$off" ] &&
     xz -dc --single-stream < <(tail -c +$((off + 1)) "$vz") > "$out" 2>/dev/null &&
     [ "$(head -c4 "$out" | tr -d '\177')" = ELF ]; then
    echo elf-pvh
  else
    cp "$vz" "$out"
    echo bzimage
  fi
}

ROOT=
LIB_PATH=   # extra LD_LIBRARY_PATH for ldd (udev's private library)

# copy_path PATH: copy PATH from the host to the same place under $ROOT;
# symlinks stay symlinks (and their targets come along), ELF files bring
# their shared libraries
copy_path() {
  local f=$1 target lib
  [ -e "$ROOT$f" ] || [ -L "$ROOT$f" ] && return 0
  mkdir -p "$ROOT${f%/*}"
  if [ -L "$f" ]; then
    target=$(readlink "$f")
    ln -s "$target" "$ROOT$f"
    case $target in /*) ;; *) target=${f%/*}/$target;; esac
    copy_path "$target"
    return 0
  fi
  [ -f "$f" ] || return 0
  cp -p "$f" "$ROOT$f"
  if [ "$(head -c4 "$f" | tr -d '\177')" = ELF ]; then
    for lib in $(LD_LIBRARY_PATH=$LIB_PATH ldd "$f" 2>/dev/null |
                 awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}'); do
      copy_path "$lib"
    done
  fi
}

# copy_from ROOTDIR PATH: copy a file of an extracted package to PATH in the
# image, with the libraries it needs from the host
copy_from() {
  local src=$1$2 lib
  mkdir -p "$ROOT$(dirname "$2")"
  cp -p "$src" "$ROOT$2"
  for lib in $(LD_LIBRARY_PATH=$LIB_PATH ldd "$src" 2>/dev/null | awk '/=> \//{print $3}'); do
    case $lib in "$1"/*) ;; *) copy_path "$lib";; esac
  done
}

main() {
  local t0=$SECONDS kpkg kroot kver
  kpkg=$(kernel_package)
  kroot=$(extract_deb "$kpkg")
  kver=$(ls "$kroot/lib/modules")
  [ -n "$kver" ] && [ -f "$kroot/boot/vmlinuz-$kver" ] || die "unexpected layout of $kpkg"
  # the .deb ships no modules.dep: generate it so that modprobe can resolve dependencies
  [ -f "$kroot/lib/modules/$kver/modules.dep" ] || depmod -b "$kroot" "$kver"

  ROOT=$(mktemp -d "$CACHE/stage.XXXXXX")
  trap 'rm -rf "$ROOT"' EXIT
  log "assembling the initramfs (kernel $kver)"

  local d
  for d in usr/bin usr/sbin usr/lib/x86_64-linux-gnu usr/lib64 dev proc sys run tmp mnt root \
           etc/lvm/archive etc/lvm/backup etc/lvm/cache etc/udev/rules.d var/lib var/tmp; do
    mkdir -p "$ROOT/$d"
  done
  ln -s usr/bin "$ROOT/bin"; ln -s usr/sbin "$ROOT/sbin"
  ln -s usr/lib "$ROOT/lib"; ln -s usr/lib64 "$ROOT/lib64"
  ln -s ../run "$ROOT/var/run"; ln -s ../run/lock "$ROOT/var/lock"
  chmod 1777 "$ROOT/tmp" "$ROOT/var/tmp"

  # programs of the host packages
  local pkg path skip_re
  skip_re="/($(tr ' ' '|' <<<"$SKIP_PROGRAMS"))\$"
  for pkg in $IMAGE_PKGS; do
    while IFS= read -r path; do
      copy_path "$path"
    done < <(dpkg -L "$pkg" | grep -E '^/(usr/)?s?bin/[^/]+$' | grep -vE "$skip_re" || true)
  done
  # dlopen()ed: dmeventd's monitoring plugins (some are symlinks), NSS, libgcc_s (pthread_cancel)
  for path in /lib/x86_64-linux-gnu/device-mapper/* /lib/x86_64-linux-gnu/libdevmapper-event-lvm2* \
              /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libgcc_s.so.1; do
    [ -e "$path" ] || [ -L "$path" ] && copy_path "$path"
  done
  [ -d "$ROOT/lib/x86_64-linux-gnu/device-mapper" ] || die "dmeventd plugins not found (is dmeventd installed?)"

  # udev from its .deb (the host never runs it): udevadm is also systemd-udevd
  local uroot sroot
  uroot=$(extract_deb udev); sroot=$(extract_deb libsystemd-shared)
  LIB_PATH=$sroot/usr/lib/x86_64-linux-gnu/systemd
  local shared; shared=$(find "$LIB_PATH" -maxdepth 1 -name 'libsystemd-shared-*.so' | head -n1)
  [ -n "$shared" ] || die "libsystemd-shared not found in the libsystemd-shared package"
  mkdir -p "$ROOT/usr/lib/x86_64-linux-gnu/systemd"
  cp "$shared" "$ROOT/usr/lib/x86_64-linux-gnu/systemd/"
  copy_from "$uroot" /bin/udevadm
  mkdir -p "$ROOT/usr/lib/systemd"
  ln -s ../../bin/udevadm "$ROOT/usr/lib/systemd/systemd-udevd"
  local helper
  for helper in ata_id scsi_id; do copy_from "$uroot" "/lib/udev/$helper"; done
  for path in $(LD_LIBRARY_PATH=$LIB_PATH ldd "$shared" | awk '/=> \//{print $3}'); do copy_path "$path"; done
  LIB_PATH=
  mkdir -p "$ROOT/usr/lib/udev/rules.d"
  local r
  for r in $UDEV_RULES; do cp "$uroot/lib/udev/rules.d/$r.rules" "$ROOT/usr/lib/udev/rules.d/"; done
  for r in $DM_RULES; do
    [ -f "/lib/udev/rules.d/$r.rules" ] || die "missing /lib/udev/rules.d/$r.rules (dmsetup/lvm2 not installed?)"
    cp "/lib/udev/rules.d/$r.rules" "$ROOT/usr/lib/udev/rules.d/"
  done

  # terminal descriptions for the interactive shell (ncurses-base)
  [ ! -d /lib/terminfo ] || cp -a /lib/terminfo "$ROOT/usr/lib/terminfo"

  # busybox for everything not provided above
  cp /bin/busybox "$ROOT/usr/bin/busybox"
  local applet
  for applet in $(/bin/busybox --list); do
    [ -e "$ROOT/usr/bin/$applet" ] || [ -e "$ROOT/usr/sbin/$applet" ] || ln -s busybox "$ROOT/usr/bin/$applet"
  done

  # kernel modules with their dependencies; depmod again inside the image
  local m modpath rel
  for m in $MODULES; do
    modprobe -d "$kroot" -S "$kver" --show-depends "$m" >/dev/null 2>&1 || die "kernel module $m not found in $kpkg"
  done
  while IFS= read -r modpath; do
    rel=${modpath#"$kroot"}
    mkdir -p "$ROOT${rel%/*}"
    cp "$modpath" "$ROOT$rel"
  done < <(for m in $MODULES; do
             modprobe -d "$kroot" -S "$kver" --show-depends "$m" | awk '$1=="insmod"{print $2}'
           done | sort -u)
  cp "$kroot/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$ROOT/lib/modules/$kver/"
  depmod -b "$ROOT" "$kver"

  # configuration
  printf 'root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' \
    > "$ROOT/etc/passwd"
  local gid=0 g
  : > "$ROOT/etc/group"
  for g in root daemon bin sys adm tty disk lp mail kmem dialout cdrom floppy tape audio video input render kvm; do
    echo "$g:x:$gid:" >> "$ROOT/etc/group"; gid=$((gid + 1))
  done
  echo 'nogroup:x:65534:' >> "$ROOT/etc/group"
  printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\n' > "$ROOT/etc/nsswitch.conf"
  printf '127.0.0.1 localhost nodevm\n' > "$ROOT/etc/hosts"
  echo nodevm > "$ROOT/etc/hostname"
  : > "$ROOT/etc/fstab"
  ln -s ../proc/self/mounts "$ROOT/etc/mtab"
  cat > "$ROOT/etc/lvm/lvm.conf" <<'EOF'
# Strata nodevm: LVM's built-in defaults except for these. init appends
# udev_sync = 0 / udev_rules = 0 when the VM runs without udev.
devices { use_devicesfile = 0 }
global { event_activation = 0 }
activation { monitoring = 1 }
EOF
  printf '/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu/systemd\n' \
    > "$ROOT/etc/ld.so.conf"
  ldconfig -r "$ROOT"
  printf 'export PS1='"'"'nodevm:\\w# '"'"'\n' > "$ROOT/root/.bashrc"
  cp "$ROOT/root/.bashrc" "$ROOT/root/.profile"
  install -m 0755 "$HERE/init.sh" "$ROOT/init"

  # an uncompressed cpio boots faster under TCG than a compressed one
  local tmp
  mkdir -p "$(dirname "$DEST")"
  tmp=$(mktemp -d "$DEST.tmp.XXXXXX"); chmod 755 "$tmp"
  (cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio -o -0 -H newc --quiet -R 0:0) > "$tmp/initrd.img"
  local kformat
  kformat=$(kernel_image "$kroot" "$kver" "$tmp/kernel")
  {
    echo "kernel_package=$kpkg"
    echo "kernel_version=$kver"
    echo "kernel_format=$kformat"
    echo "initrd_mib=$(( $(stat -c %s "$tmp/initrd.img") / 1048576 ))"
    echo "built=$(date -u +%FT%TZ)"
  } > "$tmp/info"
  # replace DEST (a concurrent run may still be reading the old files)
  if [ -e "$DEST" ]; then
    local old; old=$(mktemp -u "$DEST.old.XXXXXX")
    mv "$DEST" "$old"; mv "$tmp" "$DEST"; rm -rf "$old"
  else
    mv "$tmp" "$DEST"
  fi
  log "built $DEST (kernel $kver, initrd $(sed -n 's/^initrd_mib=//p' "$DEST/info") MiB) in $((SECONDS - t0)) s"
}

main
