#!/bin/sh
# Prepare a libvirtd with QEMU on a machine without systemd (CI, containers).
# Idempotent: run it as often as you like. Needs root (apt-get, daemons).
#
# What it does:
#   1. apt packages for libvirt, QEMU, the image tools the kvm_rocks driver uses,
#      and what libvirt-python needs to build (libvirt-dev, pkg-config);
#   2. pip install libvirt-python into the project virtualenv (.venv, made by scripts/setup; or $PYTHON);
#   3. /var/log/libvirt, a libvirt-qemu system user and group;
#   4. starts virtlogd and libvirtd as daemons when they are not running;
#   5. waits (up to 30 s) until qemu:///system answers.
set -eu

PYTHON=${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
if [ ! -x "$PYTHON" ]; then
    echo "setup-libvirt: $PYTHON not found: run scripts/setup (it makes .venv), or set PYTHON" >&2
    exit 1
fi
PACKAGES="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils libvirt-dev pkg-config e2fsprogs e2tools fdisk"

missing=""
for pkg in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
if [ -n "$missing" ]; then
    echo "setup-libvirt: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi

if ! "$PYTHON" -c "import libvirt" 2>/dev/null; then
    echo "setup-libvirt: pip install libvirt-python"
    "$PYTHON" -m pip install -q libvirt-python
fi

mkdir -p /var/log/libvirt /var/lib/libvirt/images
if ! getent group libvirt-qemu >/dev/null; then
    groupadd --system libvirt-qemu
fi
if ! getent passwd libvirt-qemu >/dev/null; then
    useradd --system --gid libvirt-qemu --no-create-home --home-dir /var/lib/libvirt \
        --shell /usr/sbin/nologin libvirt-qemu
fi

# QEMU runs as libvirt-qemu. As on a udev system, /dev/kvm belongs to group kvm
# (mode 0660) and libvirt-qemu is in it; without that, type='kvm' domains fail
# and libvirtd re-probes QEMU's capabilities on every define (about 30 s each).
if [ -e /dev/kvm ]; then
    getent group kvm >/dev/null || groupadd --system kvm
    if ! id -nG libvirt-qemu | tr ' ' '\n' | grep -qx kvm; then
        usermod -aG kvm libvirt-qemu
        restart_libvirtd=1
    fi
    chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
fi

if [ "${restart_libvirtd:-0}" = 1 ] && pgrep -x libvirtd >/dev/null; then
    echo "setup-libvirt: restarting libvirtd (libvirt-qemu joined group kvm)"
    kill "$(pgrep -x libvirtd)"
    i=0
    while pgrep -x libvirtd >/dev/null && [ "$i" -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
fi

if ! pgrep -x virtlogd >/dev/null; then
    echo "setup-libvirt: starting virtlogd"
    virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
    echo "setup-libvirt: starting libvirtd"
    libvirtd -d
fi

i=0
until virsh -c qemu:///system version >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -ge 60 ]; then
        echo "setup-libvirt: libvirtd did not answer on qemu:///system within 30 s" >&2
        exit 1
    fi
    sleep 0.5
done
echo "setup-libvirt: qemu:///system is ready"
