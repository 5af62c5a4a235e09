#!/bin/sh
# Builds the Hiber test guest, or finds it in the cache:
#   out/vmlinux         the kernel, uncompressed ELF (bootable via PVH)
#   out/initramfs.cpio  the initramfs, uncompressed newc cpio
#   out/data.ext4       a small ext4 data disk for virtio-blk tests
# Products live in cache/<key>/, keyed by a hash of every input; `out` is a
# symbolic link to the current one.
set -eu
. "$(dirname "$0")/lib.sh"

# Points `out` at the cached products of $image_key.
link_out() {
	if [ -d "$GI_OUT" ] && [ ! -L "$GI_OUT" ]; then
		rm -rf "$GI_OUT"
	fi
	ln -sfn "cache/$image_key" "$GI_OUT"
}

# Writes what was built from what, with the products' hashes.
write_manifest() {
	{
		echo "image_key $image_key"
		echo "kernel_key $kernel_key"
		echo "linux-source-6.1 $LINUX_SOURCE_VERSION"
		echo "busybox-static $BUSYBOX_STATIC_VERSION"
		toolchain_id
		(cd "$1" && sha256sum vmlinux initramfs.cpio data.ext4)
	} >"$1/manifest.tmp"
	mv "$1/manifest.tmp" "$1/manifest"
}

build_image() {
	kernel_dir="$GI_CACHE/kernel-$kernel_key"
	if [ ! -f "$kernel_dir/vmlinux" ]; then
		"$GI_DIR/scripts/build-kernel.sh" "$kernel_dir"
	fi

	tmp="$image_dir.tmp"
	rm -rf "$tmp"
	mkdir -p "$tmp"
	"$GI_DIR/scripts/build-initramfs.sh" "$kernel_dir" "$tmp"
	for f in vmlinux System.map config; do
		cp "$kernel_dir/$f" "$tmp/$f"
	done
	write_manifest "$tmp"
	mv "$tmp" "$image_dir"
	note "built $image_dir"
}

toolchain=$(toolchain_id)
# shellcheck disable=SC2046 # the input lists are words on purpose
kernel_key=$(hash_inputs $(kernel_inputs) -- "$toolchain")
# shellcheck disable=SC2046
image_key=$(hash_inputs $(image_inputs) -- "kernel $kernel_key" "$toolchain")
image_dir="$GI_CACHE/$image_key"

if [ ! -f "$image_dir/manifest" ]; then
	mkdir -p "$GI_CACHE"
	# One build at a time; a second caller waits, then finds the cache.
	exec 9>"$GI_CACHE/.lock"
	flock 9
	if [ ! -f "$image_dir/manifest" ]; then
		"$GI_DIR/scripts/check-deps.sh"
		build_image
	fi
fi
link_out
