#!/usr/bin/env bash
# Installs what Hiber needs on a fresh Debian 12 machine: the packages the
# guest images are built from, and QEMU for the benchmark's comparison.
# Rust (1.85 or newer, through rustup) must already be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh installs Debian packages: run it as root (sudo make setup)" >&2
    exit 2
fi
if ! command -v cargo >/dev/null; then
    echo "note: no cargo on root's PATH; building needs Rust 1.85 or newer (rustup)" >&2
fi
if [ ! -e /dev/kvm ]; then
    echo "warning: this machine has no /dev/kvm; Hiber builds but cannot run guests" >&2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# iproute2: the network tests make namespaces and TAPs of their own.
apt-get install -y -q qemu-system-x86 python3 iproute2
./guest-images/install-deps.sh
