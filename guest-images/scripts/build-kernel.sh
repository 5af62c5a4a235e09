#!/bin/sh
# Builds the guest kernel into the directory given as $1:
#   vmlinux, System.map, config   the kernel, its symbols and its .config
#   gen_init_cpio                 the kernel's cpio writer, for the initramfs
#   linux/                        the build tree, kept for inspection
# From the pinned Debian source tarball, the patches in kernel/patches and
# `make tinyconfig` plus kernel/config.fragment.
set -eu
. "$(dirname "$0")/lib.sh"

dest=$1
tmp="$dest.tmp"
src="$tmp/linux"
fragment="$GI_DIR/kernel/config.fragment"

check_tarball() {
	have=$(sha256sum "$LINUX_TARBALL" | cut -d' ' -f1)
	if [ "$have" != "$LINUX_TARBALL_SHA256" ]; then
		die "$LINUX_TARBALL has sha256 $have but pins.env pins" \
			"$LINUX_TARBALL_SHA256; reinstall linux-source-6.1 at the pinned" \
			"version, or review this tarball and set LINUX_TARBALL_SHA256"
	fi
}

unpack() {
	rm -rf "$tmp"
	mkdir -p "$src"
	note "unpacking $LINUX_TARBALL"
	tar -C "$src" --strip-components=1 -xf "$LINUX_TARBALL"
	for patch in "$GI_DIR"/kernel/patches/*.patch; do
		note "applying $(basename "$patch")"
		patch -d "$src" -p1 --forward --batch --quiet <"$patch" ||
			die "patch $patch does not apply to $LINUX_TARBALL"
	done
}

# Runs the kernel's make with the settings that make the build reproducible:
# fixed user, host and build number, and the source tarball's time (fixed by
# the pinned package) as the build time.
kmake() {
	make -C "$src" -s --no-print-directory KBUILD_BUILD_USER=hiber \
		KBUILD_BUILD_HOST=hiber KBUILD_BUILD_VERSION=1 \
		KBUILD_BUILD_TIMESTAMP="$(date -u -r "$LINUX_TARBALL" '+%Y-%m-%d %H:%M:%S UTC')" \
		"$@"
}

# Fails if a line of the fragment did not survive `make olddefconfig`.
verify_config() {
	grep -E '^(CONFIG_[A-Za-z0-9_]+=|# CONFIG_[A-Za-z0-9_]+ is not set)' "$fragment" |
		while IFS= read -r line; do
			case "$line" in
			"# "*)
				sym=${line#"# "}
				sym=${sym%" is not set"}
				! grep -q "^$sym=" "$src/.config" ||
					die "kernel config: $sym is set though the fragment unsets it;" \
						"another option selects it (see $src/.config)"
				;;
			*)
				grep -qxF "$line" "$src/.config" ||
					die "kernel config: '$line' from the fragment was dropped by" \
						"olddefconfig (a dependency is missing; see $src/.config)"
				;;
			esac
		done
}

configure() {
	note "configuring: tinyconfig + $(basename "$fragment")"
	log="$tmp/config.log"
	if ! {
		kmake tinyconfig &&
			(cd "$src" && ./scripts/kconfig/merge_config.sh -m .config "$fragment") &&
			kmake olddefconfig
	} >"$log" 2>&1; then
		tail -n 30 "$log" >&2
		die "kernel configuration failed; full log in $log"
	fi
	verify_config
}

compile() {
	jobs=$(nproc)
	note "compiling vmlinux with $jobs jobs (several minutes; log: $tmp/build.log)"
	if ! kmake -j"$jobs" vmlinux >"$tmp/build.log" 2>&1; then
		tail -n 30 "$tmp/build.log" >&2
		die "kernel build failed; full log in $tmp/build.log"
	fi
	gcc -O2 -o "$tmp/gen_init_cpio" "$src/usr/gen_init_cpio.c"
	cp "$src/vmlinux" "$tmp/vmlinux"
	cp "$src/System.map" "$tmp/System.map"
	cp "$src/.config" "$tmp/config"
}

check_tarball
unpack
configure
compile
rm -rf "$dest"
mv "$tmp" "$dest"
note "kernel ready: $dest/vmlinux"
