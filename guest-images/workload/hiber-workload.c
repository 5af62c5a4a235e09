// SPDX-License-Identifier: Apache-2.0
/*
 * hiber-workload: a guest program whose memory and clock a snapshot must keep.
 *
 * Usage: hiber-workload [MiB [ticks]]   (defaults: 8 MiB, run forever)
 *
 * It fills a buffer of MiB mebibytes with a deterministic sequence, then once
 * a second re-checksums the whole buffer against the checksum it expects,
 * rewrites one slice of the buffer (so guest memory keeps changing), updates
 * the expected checksum and prints one line:
 *
 *   hiber-workload: tick <counter> checksum <ok|BAD> mono_ns <ns>
 *
 * If CLOCK_MONOTONIC is ever lower than at the previous tick it also prints
 *
 *   hiber-workload: mono BACKWARDS by <ns> ns
 *
 * The checksum weighs each 64-bit word by its position, so lost, swapped or
 * stale pages are all detected, and it can be updated word by word.
 *
 * Syscalls and page faults are expensive on an emulating host, so the buffer
 * is populated by one mmap(MAP_POPULATE), each tick writes only one slice of
 * already-present pages, and each line is one write(2).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024u * 1024u)
#define NS_PER_SEC 1000000000ull
/* Words rewritten each tick: 64 KiB, sixteen pages. */
#define SLICE_WORDS (64u * 1024u / sizeof(uint64_t))
#define MAX_MIB 4096ul

struct workload {
	uint64_t *words;
	size_t nwords;
	uint64_t expected;
	uint64_t counter;
	size_t next_slice;
};

/* The value of word `index` after `generation` rewrites (splitmix64). */
static uint64_t word_value(uint64_t index, uint64_t generation)
{
	uint64_t z = index * 0x9e3779b97f4a7c15ull + generation * 0xbf58476d1ce4e5b9ull;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Each word's weight in the checksum; odd, so no word is ignored. */
static uint64_t weight(size_t index)
{
	return 2 * (uint64_t)index + 1;
}

static uint64_t checksum(const struct workload *w)
{
	uint64_t sum = 0;

	for (size_t i = 0; i < w->nwords; i++)
		sum += w->words[i] * weight(i);
	return sum;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
	char line[160];
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
	if (write(STDOUT_FILENO, line, (size_t)len) < 0)
		exit(2);
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
		say("hiber-workload: clock_gettime failed: %s\n", strerror(errno));
		exit(1);
	}
	return (uint64_t)ts.tv_sec * NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

static void fill(struct workload *w, size_t mib)
{
	size_t bytes = mib * MIB;
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (p == MAP_FAILED) {
		say("hiber-workload: cannot map %zu MiB: %s\n", mib, strerror(errno));
		exit(1);
	}
	w->words = p;
	w->nwords = bytes / sizeof(uint64_t);
	for (size_t i = 0; i < w->nwords; i++)
		w->words[i] = word_value(i, 0);
	w->expected = checksum(w);
}

/* Rewrites the next slice with a new generation, keeping `expected` right. */
static void mutate(struct workload *w)
{
	size_t start = w->next_slice * SLICE_WORDS;
	size_t end = start + SLICE_WORDS;
	uint64_t generation = w->counter + 1;

	if (end > w->nwords)
		end = w->nwords;
	for (size_t i = start; i < end; i++) {
		uint64_t fresh = word_value(i, generation);

		w->expected += (fresh - w->words[i]) * weight(i);
		w->words[i] = fresh;
	}
	w->next_slice = end >= w->nwords ? 0 : w->next_slice + 1;
}

/* Sleeps until `deadline`; after a long pause (a snapshot) it skips ahead. */
static uint64_t wait_for_tick(uint64_t deadline)
{
	struct timespec ts = {
		.tv_sec = (time_t)(deadline / NS_PER_SEC),
		.tv_nsec = (long)(deadline % NS_PER_SEC),
	};
	uint64_t now;

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
	now = mono_ns();
	return now > deadline + NS_PER_SEC ? now + NS_PER_SEC : deadline + NS_PER_SEC;
}

static size_t parse_arg(const char *arg, const char *what, size_t max)
{
	char *end;
	unsigned long value;

	errno = 0;
	value = strtoul(arg, &end, 10);
	if (errno != 0 || *end != '\0' || end == arg || value > max) {
		say("hiber-workload: %s '%s' is not a number up to %zu\n", what, arg, max);
		exit(64);
	}
	return value;
}

int main(int argc, char **argv)
{
	struct workload w = { 0 };
	size_t mib = argc > 1 ? parse_arg(argv[1], "MiB", MAX_MIB) : 8;
	uint64_t ticks = argc > 2 ? parse_arg(argv[2], "ticks", SIZE_MAX) : 0;
	uint64_t previous, deadline;

	if (mib == 0) {
		say("hiber-workload: MiB must be at least 1\n");
		return 64;
	}
	fill(&w, mib);
	say("hiber-workload: started mib %zu pid %ld\n", mib, (long)getpid());

	previous = mono_ns();
	deadline = previous + NS_PER_SEC;
	while (ticks == 0 || w.counter < ticks) {
		uint64_t now;
		int ok;

		deadline = wait_for_tick(deadline);
		ok = checksum(&w) == w.expected;
		mutate(&w);
		w.counter++;
		now = mono_ns();
		say("hiber-workload: tick %" PRIu64 " checksum %s mono_ns %" PRIu64 "\n",
		    w.counter, ok ? "ok" : "BAD", now);
		if (now < previous)
			say("hiber-workload: mono BACKWARDS by %" PRIu64 " ns\n", previous - now);
		previous = now;
	}
	return 0;
}
