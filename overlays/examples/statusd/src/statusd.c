/*
 * statusd: a tiny HTTP status endpoint for fwgen's example vendor overlay.
 *
 * GET /status answers a JSON object with the host name, uptime, load averages, free memory
 * and the number of processes, read from /proc; any other path is a 404. One connection is
 * served at a time (a status page needs no more), each with a read timeout, so a stuck client
 * cannot hold the daemon. It runs in the foreground under fwgen's service supervisor and logs
 * to stderr.
 *
 *   statusd [-p PORT]     (default port 8081)
 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "status.h"

static int listen_on(int port)
{
	struct sockaddr_in6 addr = { .sin6_family = AF_INET6, .sin6_port = htons(port) };
	int one = 1, zero = 0;
	int fd = socket(AF_INET6, SOCK_STREAM, 0);

	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)); /* IPv4 too */
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 8) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Read the request line ("GET /status HTTP/1.1"); returns the path, or NULL. */
static char *read_request_path(int fd, char *buf, size_t size)
{
	size_t used = 0;
	char *end, *path;

	while (used < size - 1) {
		ssize_t n = read(fd, buf + used, size - 1 - used);
		if (n <= 0)
			return NULL;
		used += n;
		buf[used] = '\0';
		if (strstr(buf, "\r\n\r\n") || strstr(buf, "\n\n"))
			break;
	}
	if (strncmp(buf, "GET ", 4) != 0)
		return NULL;
	path = buf + 4;
	end = strchr(path, ' ');
	if (!end)
		return NULL;
	*end = '\0';
	return path;
}

static void write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		data += n;
		len -= n;
	}
}

static void respond(int fd, int code, const char *reason, const char *type, const char *body)
{
	char head[256];
	int n = snprintf(head, sizeof(head),
			 "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n", code, reason, type, strlen(body));
	write_all(fd, head, n);
	write_all(fd, body, strlen(body));
}

static void serve(int client)
{
	char request[2048], body[1024];
	struct timeval timeout = { .tv_sec = 5 };
	const char *path;

	setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	path = read_request_path(client, request, sizeof(request));
	if (!path) {
		respond(client, 400, "Bad Request", "text/plain", "bad request\n");
	} else if (strcmp(path, "/status") == 0) {
		if (format_status(body, sizeof(body)) < 0)
			respond(client, 500, "Internal Server Error", "text/plain", "cannot read /proc\n");
		else
			respond(client, 200, "OK", "application/json", body);
	} else {
		respond(client, 404, "Not Found", "text/plain", "try /status\n");
	}
	close(client);
}

int main(int argc, char **argv)
{
	int port = 8081, fd, opt;

	while ((opt = getopt(argc, argv, "p:")) != -1) {
		if (opt != 'p' || (port = atoi(optarg)) <= 0 || port > 65535) {
			fprintf(stderr, "usage: %s [-p PORT]\n", argv[0]);
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN); /* a client that hangs up must not kill the daemon */
	fd = listen_on(port);
	if (fd < 0) {
		fprintf(stderr, "statusd: cannot listen on port %d: %s\n", port, strerror(errno));
		return 1;
	}
	fprintf(stderr, "statusd: serving /status on port %d\n", port);
	for (;;) {
		int client = accept(fd, NULL, NULL);
		if (client >= 0)
			serve(client);
		else if (errno != EINTR)
			fprintf(stderr, "statusd: accept: %s\n", strerror(errno));
	}
}
