// SPDX-License-Identifier: Apache-2.0
/*
 * hiber-blkbench: block-device throughput and IOPS inside the guest.
 *
 * Usage: hiber-blkbench DEVICE MODE SIZE_MIB
 *
 *   MODE      seqread | seqwrite    1 MiB requests, in order from offset 0
 *             randread | randwrite  4 KiB requests at random 4 KiB-aligned
 *                                   offsets over the whole device
 *   SIZE_MIB  how much to move in total (wrapping around a smaller device)
 *
 * The device is opened with O_DIRECT, so every request reaches the device
 * (no guest page cache); requests are issued one at a time (queue depth 1)
 * from one 4 KiB-aligned buffer that is touched before the clock starts, so
 * the timed loop holds only the pread/pwrite calls. The random offsets come
 * from a fixed-seed generator: every run visits the same offsets. A write
 * mode then asks the device to flush its cache (fdatasync), timed apart.
 * One line is printed, in one write(2):
 *
 *   hiber-blkbench: <mode> bytes=<n> ns=<n> ops=<n> block=<n> flush_ns=<n>
 *
 * where ns covers the requests only and flush_ns the final flush (0 for
 * reads). Errors go to stderr with exit status 1 (64 for bad arguments).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define KIB 1024u
#define MIB (1024u * 1024u)
#define NS_PER_SEC 1000000000ull
#define SEQ_BLOCK MIB
#define RAND_BLOCK (4u * KIB)
#define ALIGN (4u * KIB)
#define MAX_MIB 65536ul
/* Any fixed odd value: the same offsets in every run and every VMM. */
#define RAND_SEED 0x9e3779b97f4a7c15ull

struct mode {
	const char *name;
	size_t block;
	int write;
	int random;
};

static const struct mode MODES[] = {
	{ "seqread", SEQ_BLOCK, 0, 0 },
	{ "seqwrite", SEQ_BLOCK, 1, 0 },
	{ "randread", RAND_BLOCK, 0, 1 },
	{ "randwrite", RAND_BLOCK, 1, 1 },
};

static void say(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(int fd, const char *fmt, ...)
{
	char line[256];
	va_list ap;
	int len;

	va_start(ap, fmt);
	len = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (len < 0)
		return;
	if ((size_t)len >= sizeof(line))
		len = sizeof(line) - 1;
	/* One write per line keeps lines whole on a shared console. */
	if (write(fd, line, (size_t)len) < 0)
		exit(2);
}

static void die(const char *what, const char *arg)
{
	say(STDERR_FILENO, "hiber-blkbench: %s %s: %s\n", what, arg, strerror(errno));
	exit(1);
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		die("clock_gettime", "CLOCK_MONOTONIC");
	return (uint64_t)ts.tv_sec * NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: small, fast and good enough to scatter offsets. */
static uint64_t next_random(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545f4914f6cdd1dull;
}

static const struct mode *parse_mode(const char *arg)
{
	for (size_t i = 0; i < sizeof(MODES) / sizeof(MODES[0]); i++)
		if (strcmp(arg, MODES[i].name) == 0)
			return &MODES[i];
	say(STDERR_FILENO, "hiber-blkbench: mode '%s' is not one of seqread, seqwrite, "
	    "randread, randwrite\n", arg);
	exit(64);
}

static size_t parse_mib(const char *arg)
{
	char *end;
	unsigned long value;

	errno = 0;
	value = strtoul(arg, &end, 10);
	if (errno != 0 || *end != '\0' || end == arg || value == 0 || value > MAX_MIB) {
		say(STDERR_FILENO, "hiber-blkbench: SIZE_MIB '%s' is not a number from 1 to %lu\n",
		    arg, MAX_MIB);
		exit(64);
	}
	return value;
}

/* A block-aligned buffer, every page touched now rather than in the loop. */
static void *make_buffer(size_t block)
{
	void *buf;
	int err = posix_memalign(&buf, ALIGN, block);

	if (err != 0) {
		errno = err;
		die("cannot allocate the buffer for", "one request");
	}
	for (size_t i = 0; i < block; i++)
		((unsigned char *)buf)[i] = (unsigned char)(i * 31 + 7);
	return buf;
}

/* How many blocks of `block` bytes the device holds. */
static uint64_t device_blocks(int fd, const char *device, size_t block)
{
	off_t size = lseek(fd, 0, SEEK_END);

	if (size < 0)
		die("cannot find the size of", device);
	if ((uint64_t)size < block) {
		say(STDERR_FILENO, "hiber-blkbench: %s holds %jd bytes, less than one %zu-byte "
		    "block\n", device, (intmax_t)size, block);
		exit(1);
	}
	return (uint64_t)size / block;
}

static void one_request(int fd, const struct mode *m, void *buf, uint64_t offset,
			const char *device)
{
	ssize_t done = m->write ? pwrite(fd, buf, m->block, (off_t)offset)
				: pread(fd, buf, m->block, (off_t)offset);

	if (done < 0)
		die(m->write ? "write to" : "read from", device);
	if ((size_t)done != m->block) {
		say(STDERR_FILENO, "hiber-blkbench: short %s of %zd bytes at offset %" PRIu64
		    " on %s\n", m->name, done, offset, device);
		exit(1);
	}
}

int main(int argc, char **argv)
{
	const struct mode *m;
	uint64_t blocks, ops, state = RAND_SEED, start, ns, flush_ns = 0;
	void *buf;
	int fd;

	if (argc != 4) {
		say(STDERR_FILENO, "usage: hiber-blkbench DEVICE seqread|seqwrite|randread|"
		    "randwrite SIZE_MIB\n");
		return 64;
	}
	m = parse_mode(argv[2]);
	ops = (uint64_t)parse_mib(argv[3]) * MIB / m->block;
	fd = open(argv[1], (m->write ? O_RDWR : O_RDONLY) | O_DIRECT);
	if (fd < 0)
		die("cannot open", argv[1]);
	blocks = device_blocks(fd, argv[1], m->block);
	buf = make_buffer(m->block);

	start = mono_ns();
	for (uint64_t i = 0; i < ops; i++) {
		uint64_t index = m->random ? next_random(&state) % blocks : i % blocks;

		one_request(fd, m, buf, index * m->block, argv[1]);
	}
	ns = mono_ns() - start;
	if (m->write) {
		start = mono_ns();
		if (fdatasync(fd) != 0)
			die("cannot flush", argv[1]);
		flush_ns = mono_ns() - start;
	}

	say(STDOUT_FILENO, "hiber-blkbench: %s bytes=%" PRIu64 " ns=%" PRIu64 " ops=%" PRIu64
	    " block=%zu flush_ns=%" PRIu64 "\n", m->name, ops * m->block, ns, ops, m->block,
	    flush_ns);
	return 0;
}
