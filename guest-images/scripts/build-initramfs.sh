#!/bin/sh
# Builds the guest's userspace into the directory given as $2:
#   initramfs.cpio  busybox, /init, the console agent, hiber-workload,
#                   hiber-vsock-agent and hiber-blkbench
#   data.ext4       a small ext4 disk holding hello.txt
# $1 is the kernel directory (for its gen_init_cpio).
set -eu
. "$(dirname "$0")/lib.sh"

kernel_dir=$1
dest=$2
work="$dest/work"
rootfs="$GI_DIR/rootfs"

compile_workload() {
	for prog in hiber-workload hiber-vsock-agent hiber-blkbench; do
		gcc -static -O2 -Wall -Wextra -Werror -o "$work/$prog" \
			"$GI_DIR/workload/$prog.c"
		strip "$work/$prog"
	done
}

# Copies every file of the image into $work/stage with one fixed mtime
# (gen_init_cpio takes regular files' times from the files themselves).
stage_files() {
	mkdir -p "$work/stage"
	cp "$BUSYBOX_BINARY" "$work/stage/busybox"
	cp "$work/hiber-workload" "$work/hiber-vsock-agent" "$work/hiber-blkbench" \
		"$rootfs/init" "$rootfs/agent.sh" "$rootfs/etc/fstab" "$work/stage/"
	touch -d @0 "$work/stage"/*
}

# The gen_init_cpio list: owners root, fixed modes, fixed timestamps.
cpio_list() {
	stage="$work/stage"
	cat <<LIST
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /tmp 1777 0 0
dir /mnt 0755 0 0
dir /root 0700 0 0
dir /etc 0755 0 0
file /etc/fstab $stage/fstab 0644 0 0
dir /bin 0755 0 0
file /bin/busybox $stage/busybox 0755 0 0
slink /bin/sh busybox 0777 0 0
file /bin/hiber-workload $stage/hiber-workload 0755 0 0
file /bin/hiber-vsock-agent $stage/hiber-vsock-agent 0755 0 0
file /bin/hiber-blkbench $stage/hiber-blkbench 0755 0 0
dir /lib 0755 0 0
dir /lib/hiber 0755 0 0
file /lib/hiber/agent.sh $stage/agent.sh 0644 0 0
file /init $stage/init 0755 0 0
LIST
}

make_data_disk() {
	mkdir -p "$work/data"
	echo "hiber-data: ok" >"$work/data/hello.txt"
	touch -d @0 "$work/data/hello.txt"
	# Fixed UUID, hash seed and time, so the same inputs give the same disk.
	E2FSPROGS_FAKE_TIME=1 mke2fs -q -F -t ext4 -L hiber-data \
		-U 68696265-7200-4000-8000-000000000001 \
		-E hash_seed=68696265-7200-4000-8000-000000000002,root_owner=0:0 \
		-d "$work/data" "$dest/data.ext4" 16M >/dev/null
}

rm -rf "$work"
mkdir -p "$work"
compile_workload
stage_files
cpio_list >"$work/cpio.list"
"$kernel_dir/gen_init_cpio" -t 0 "$work/cpio.list" >"$dest/initramfs.cpio"
make_data_disk
rm -rf "$work"
