#!/bin/sh
# Checks that this machine has the pinned packages and the build tools.
set -eu
. "$(dirname "$0")/lib.sh"

# Fails unless Debian package $1 is installed at the pinned version $2.
check_pinned() {
	have=$(installed_version "$1")
	if [ -z "$have" ]; then
		die "package $1 is not installed; run guest-images/install-deps.sh as root"
	fi
	if [ "$have" != "$2" ]; then
		die "package $1 is at version $have but pins.env pins $2; install the pinned" \
			"version (apt-get install $1=$2) or, after reviewing the new one, set" \
			"it in guest-images/pins.env (the guest will be rebuilt)"
	fi
}

check_pinned linux-source-6.1 "$LINUX_SOURCE_VERSION"
check_pinned busybox-static "$BUSYBOX_STATIC_VERSION"

for tool in make gcc ld tar xz patch flex bison bc perl mke2fs flock sha256sum; do
	command -v "$tool" >/dev/null 2>&1 ||
		die "tool '$tool' is missing; run guest-images/install-deps.sh as root"
done
for header in libelf.h openssl/opensslv.h; do
	[ -f "/usr/include/$header" ] ||
		die "header $header is missing; run guest-images/install-deps.sh as root"
done
[ -f "$LINUX_TARBALL" ] ||
	die "$LINUX_TARBALL is missing; reinstall linux-source-6.1"
[ -x "$BUSYBOX_BINARY" ] ||
	die "$BUSYBOX_BINARY is missing; reinstall busybox-static"
