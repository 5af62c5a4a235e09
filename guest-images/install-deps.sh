#!/bin/sh
# Installs, as root on Debian 12, every package the guest-image recipe uses.
#
#   install-deps.sh          the pinned linux-source-6.1 and busybox-static
#   install-deps.sh --latest whatever versions the archive has now (then
#                            review them and update pins.env)
#   install-deps.sh --qemu   also qemu-system-x86, to boot-test the guest
#
# Debian's archive keeps only the newest point release of a package, so a
# pinned version can disappear; --latest plus a pins.env update is the fix.
set -eu
cd "$(dirname "$0")"
. ./pins.env

latest=no
qemu=""
for arg in "$@"; do
	case "$arg" in
	--latest) latest=yes ;;
	--qemu) qemu="qemu-system-x86 python3" ;;
	*) echo "install-deps.sh: unknown option '$arg' (--latest, --qemu)" >&2; exit 64 ;;
	esac
done

if [ "$latest" = yes ]; then
	pinned="linux-source-6.1 busybox-static"
else
	pinned="linux-source-6.1=$LINUX_SOURCE_VERSION busybox-static=$BUSYBOX_STATIC_VERSION"
fi

# Kernel build: make gcc flex bison bc perl libelf-dev libssl-dev;
# unpacking and patching: xz-utils tar patch; data disk: e2fsprogs;
# locking: util-linux (flock).
tools="make gcc libc6-dev binutils flex bison bc perl libelf-dev libssl-dev"
tools="$tools xz-utils tar patch e2fsprogs util-linux"

export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086 # package lists are words on purpose
if ! apt-get install -y --no-install-recommends $pinned $tools $qemu; then
	echo "install-deps.sh: installing the pinned versions failed; if the archive" \
		"no longer has them, run install-deps.sh --latest and update pins.env" >&2
	exit 1
fi
