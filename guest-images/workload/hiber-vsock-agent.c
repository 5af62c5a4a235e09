// SPDX-License-Identifier: Apache-2.0
/*
 * hiber-vsock-agent: the test guest's vsock services.
 *
 * Usage:
 *   hiber-vsock-agent serve
 *       Listens on vsock port 52 (commands) and 53 (echo); /init starts it.
 *   hiber-vsock-agent connect <port> <text>
 *       Connects to the host (cid 2) at <port>, sends <text>, shuts its
 *       sending and prints what comes back until the host closes.
 *
 * Port 52: per connection, one command line (at most 4 KiB, up to a
 * newline) is run with /bin/sh -c, its input from /dev/null and its output
 * and errors to the connection; then the agent sends
 *
 *   hiber-agent: done <status>
 *
 * (the exit status, or 128 + the signal that ended it) and closes.
 * Port 53: every byte received is sent back until the peer shuts its
 * sending, for latency measurements.
 *
 * Each connection gets a child process, so a slow command never blocks
 * the other port. The server never exits by itself: a failed setup is
 * retried every few seconds. On a host that emulates the guest kernel a
 * process may die of SIGSEGV as it starts (see /init); /init restarts the
 * server then, and a host client retries a connection that ends without
 * its done line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define COMMAND_PORT 52
#define ECHO_PORT 53
#define MAX_LINE 4096
#define SETUP_RETRY_SECONDS 5

/* Writes all of buf; returns 0, or -1 when the peer is gone. */
static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* One line to the kernel log, where `dmesg` shows it; best effort. */
static void note(const char *line)
{
	int fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	(void)write_all(fd, line, strlen(line));
	close(fd);
}

static int listen_on(unsigned int port)
{
	struct sockaddr_vm addr = {
		.svm_family = AF_VSOCK,
		.svm_cid = VMADDR_CID_ANY,
		.svm_port = port,
	};
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, 16) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Reads up to the first newline (or MAX_LINE - 1 bytes, or the end). */
static size_t read_line(int fd, char *line)
{
	size_t len = 0;

	while (len < MAX_LINE - 1) {
		ssize_t n = read(fd, line + len, MAX_LINE - 1 - len);
		char *nl;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		nl = memchr(line + len, '\n', (size_t)n);
		if (nl) {
			len = (size_t)(nl - line);
			break;
		}
		len += (size_t)n;
	}
	if (len > 0 && line[len - 1] == '\r')
		len--;
	line[len] = '\0';
	return len;
}

static void run_shell(int fd, const char *cmd)
{
	int null = open("/dev/null", O_RDONLY);

	if (null < 0 || dup2(null, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
		_exit(126);
	execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
	_exit(127);
}

static int wait_status(pid_t pid)
{
	int st;

	while (waitpid(pid, &st, 0) < 0) {
		if (errno != EINTR)
			return 255;
	}
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	return 128 + WTERMSIG(st);
}

static void serve_command(int fd)
{
	char line[MAX_LINE];
	char done[64];
	pid_t pid;
	int status;

	read_line(fd, line);
	pid = fork();
	if (pid == 0)
		run_shell(fd, line);
	status = pid < 0 ? 255 : wait_status(pid);
	snprintf(done, sizeof(done), "hiber-agent: done %d\n", status);
	(void)write_all(fd, done, strlen(done));
}

static void serve_echo(int fd)
{
	static char buf[64 * 1024];

	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0 || write_all(fd, buf, (size_t)n) != 0)
			return;
	}
}

/* Accepts one connection on `listener` and serves it in a child. */
static void accept_one(int listener, int other, void (*serve)(int))
{
	int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
	pid_t pid;

	if (fd < 0)
		return;
	pid = fork();
	if (pid == 0) {
		close(listener);
		close(other);
		/* The child waits for its own shell. */
		signal(SIGCHLD, SIG_DFL);
		serve(fd);
		_exit(0);
	}
	close(fd);
}

static void serve(void) __attribute__((noreturn));

static void serve(void)
{
	struct pollfd fds[2];

	/* Children are reaped by the kernel; a closed peer is an error return. */
	signal(SIGCHLD, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	for (;;) {
		fds[0].fd = listen_on(COMMAND_PORT);
		fds[1].fd = listen_on(ECHO_PORT);
		if (fds[0].fd >= 0 && fds[1].fd >= 0)
			break;
		fprintf(stderr, "hiber-vsock-agent: cannot listen on vsock: %s\n", strerror(errno));
		if (fds[0].fd >= 0)
			close(fds[0].fd);
		if (fds[1].fd >= 0)
			close(fds[1].fd);
		sleep(SETUP_RETRY_SECONDS);
	}
	note("hiber-vsock-agent: serving vsock ports 52 (command) and 53 (echo)\n");
	fds[0].events = fds[1].events = POLLIN;
	for (;;) {
		if (poll(fds, 2, -1) < 0)
			continue;
		if (fds[0].revents)
			accept_one(fds[0].fd, fds[1].fd, serve_command);
		if (fds[1].revents)
			accept_one(fds[1].fd, fds[0].fd, serve_echo);
	}
}

static int client(const char *port_arg, const char *text)
{
	struct sockaddr_vm addr = {
		.svm_family = AF_VSOCK,
		.svm_cid = VMADDR_CID_HOST,
	};
	char buf[4096];
	char *end;
	unsigned long port;
	int fd;
	ssize_t n;

	errno = 0;
	port = strtoul(port_arg, &end, 10);
	if (errno != 0 || *end != '\0' || end == port_arg || port > 0xffffffffUL) {
		fprintf(stderr, "hiber-vsock-agent: port '%s' is not a number\n", port_arg);
		return 64;
	}
	addr.svm_port = (unsigned int)port;
	fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
		fprintf(stderr, "hiber-vsock-agent: connect to host port %lu: %s\n", port,
			strerror(errno));
		return 1;
	}
	if (write_all(fd, text, strlen(text)) != 0) {
		fprintf(stderr, "hiber-vsock-agent: send to host port %lu failed\n", port);
		return 1;
	}
	shutdown(fd, SHUT_WR);
	while ((n = read(fd, buf, sizeof(buf))) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || write_all(STDOUT_FILENO, buf, (size_t)n) != 0)
			return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "serve") == 0)
		serve();
	if (argc == 4 && strcmp(argv[1], "connect") == 0)
		return client(argv[2], argv[3]);
	fprintf(stderr, "usage: hiber-vsock-agent serve\n"
			"       hiber-vsock-agent connect <port> <text>\n");
	return 64;
}
