# Shared helpers of the guest-image recipe; sourced, not run.

# The guest-images directory, wherever the recipe is called from.
GI_DIR=$(cd "$(dirname "$0")/.." && pwd)
GI_CACHE="$GI_DIR/cache"
GI_OUT="$GI_DIR/out"

# shellcheck source=../pins.env
. "$GI_DIR/pins.env"

die() {
	echo "guest-images: error: $*" >&2
	exit 1
}

note() {
	echo "guest-images: $*" >&2
}

# Prints the installed version of a Debian package, or nothing.
installed_version() {
	dpkg-query -W -f '${Version}' "$1" 2>/dev/null || true
}

# Prints one sha256 over the named files' paths (relative) and contents,
# followed by any extra words given after `--`.
hash_inputs() {
	(
		cd "$GI_DIR" || exit 1
		while [ $# -gt 0 ] && [ "$1" != "--" ]; do
			sha256sum "$1"
			shift
		done
		[ "${1:-}" = "--" ] && shift
		printf '%s\n' "$@"
	) | sha256sum | cut -c1-16
}

# The files that fully determine the kernel.
kernel_inputs() {
	echo pins.env scripts/lib.sh scripts/build-kernel.sh kernel/config.fragment
	(cd "$GI_DIR" && ls kernel/patches/*.patch)
}

# The files that determine the rest of the image (besides the kernel key).
image_inputs() {
	echo Makefile scripts/build.sh scripts/build-initramfs.sh
	echo scripts/check-deps.sh install-deps.sh
	(cd "$GI_DIR" && find rootfs workload -type f | LC_ALL=C sort)
}

# Names the compiler and linker that build the kernel and the workload.
toolchain_id() {
	echo "gcc $(gcc -dumpfullversion 2>/dev/null)"
	echo "libc6-dev $(installed_version libc6-dev)"
	ld --version 2>/dev/null | head -n 1
}
