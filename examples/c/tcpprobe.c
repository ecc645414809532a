/* tcpprobe: a TCP client or server that prints what each syscall returned, with errno names.
 *
 *   tcpprobe connect ADDR PORT [MESSAGE]   connect, send MESSAGE, shut down writing, read until EOF, close
 *   tcpprobe serve PORT [COUNT]            listen on PORT, echo what each client sends until it closes;
 *                                          COUNT connections, then exit (0 or none: forever)
 *   tcpprobe sleep                         wait for a signal (keeps a FROM scratch container running)
 *
 * One line per syscall on stdout, line-buffered, each stamped with CLOCK_MONOTONIC (the clock of netfault's
 * timeline):  [  1234.567890] connect(3, 10.213.5.20:7000) = -1 ECONNREFUSED (Connection refused)
 * Exit status: 0 if every syscall succeeded, 1 if one failed (the run stops there), 2 for bad arguments.
 * Built static (`netfault build --scratch examples/c/tcpprobe.c`), it is the only file of its image.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void say(const char *fmt, ...) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    printf("[%12.6f] ", now.tv_sec + now.tv_nsec / 1e9);
    va_list args;
    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);
    putchar('\n');
}

/* Print "call = ret" or "call = -1 ENAME (text)"; returns ret. */
static long report(const char *call, long ret) {
    if (ret < 0) {
        int err = errno;
        say("%s = -1 %s (%s)", call, strerrorname_np(err), strerror(err));
        errno = err;
    } else {
        say("%s = %ld", call, ret);
    }
    return ret;
}

static int parse_port(const char *text) {
    char *end;
    long port = strtol(text, &end, 10);
    return (*end || port <= 0 || port > 65535) ? -1 : (int)port;
}

static int do_connect(const char *addr, int port, const char *message) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        fprintf(stderr, "tcpprobe: not an IPv4 address: %s\n", addr);
        return 2;
    }
    char call[128];
    int fd = report("socket(AF_INET, SOCK_STREAM)", socket(AF_INET, SOCK_STREAM, 0));
    if (fd < 0) return 1;
    snprintf(call, sizeof call, "connect(%d, %s:%d)", fd, addr, port);
    if (report(call, connect(fd, (struct sockaddr *)&sa, sizeof sa)) < 0) return 1;
    if (message) {
        snprintf(call, sizeof call, "send(%d, %zu bytes)", fd, strlen(message));
        if (report(call, send(fd, message, strlen(message), MSG_NOSIGNAL)) < 0) return 1;
        snprintf(call, sizeof call, "shutdown(%d, SHUT_WR)", fd);
        if (report(call, shutdown(fd, SHUT_WR)) < 0) return 1;
    }
    char buf[4096];
    long got;
    snprintf(call, sizeof call, "recv(%d, %zu)", fd, sizeof buf);
    while ((got = report(call, recv(fd, buf, sizeof buf, 0))) > 0)
        say("data: %.*s", (int)got, buf);
    if (got < 0) return 1;
    snprintf(call, sizeof call, "close(%d)", fd);
    return report(call, close(fd)) < 0;
}

static int echo(int fd) {
    char buf[4096], call[64];
    long got;
    snprintf(call, sizeof call, "recv(%d, %zu)", fd, sizeof buf);
    while ((got = report(call, recv(fd, buf, sizeof buf, 0))) > 0) {
        char sent[64];
        snprintf(sent, sizeof sent, "send(%d, %ld bytes)", fd, got);
        if (report(sent, send(fd, buf, got, MSG_NOSIGNAL)) < 0) break;
    }
    snprintf(call, sizeof call, "close(%d)", fd);
    report(call, close(fd));
    return got < 0;
}

static int do_serve(int port, long count) {
    char call[128];
    int one = 1, failed = 0;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = INADDR_ANY};
    int fd = report("socket(AF_INET, SOCK_STREAM)", socket(AF_INET, SOCK_STREAM, 0));
    if (fd < 0) return 1;
    snprintf(call, sizeof call, "setsockopt(%d, SO_REUSEADDR, 1)", fd);
    if (report(call, setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one)) < 0) return 1;
    snprintf(call, sizeof call, "bind(%d, 0.0.0.0:%d)", fd, port);
    if (report(call, bind(fd, (struct sockaddr *)&sa, sizeof sa)) < 0) return 1;
    snprintf(call, sizeof call, "listen(%d, 16)", fd);
    if (report(call, listen(fd, 16)) < 0) return 1;
    for (long n = 0; count == 0 || n < count; n++) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        snprintf(call, sizeof call, "accept(%d)", fd);
        int conn = report(call, accept(fd, (struct sockaddr *)&peer, &len));
        if (conn < 0) return 1;
        say("peer: %s:%d", inet_ntoa(peer.sin_addr), ntohs(peer.sin_port));
        failed |= echo(conn);
    }
    return failed;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 4 && argc <= 5 && !strcmp(argv[1], "connect") && parse_port(argv[3]) > 0)
        return do_connect(argv[2], parse_port(argv[3]), argc == 5 ? argv[4] : NULL);
    if (argc >= 3 && argc <= 4 && !strcmp(argv[1], "serve") && parse_port(argv[2]) > 0)
        return do_serve(parse_port(argv[2]), argc == 4 ? atol(argv[3]) : 0);
    if (argc == 2 && !strcmp(argv[1], "sleep")) {
        say("pause()");
        pause();
        return 0;
    }
    fprintf(stderr, "usage: tcpprobe connect ADDR PORT [MESSAGE] | serve PORT [COUNT] | sleep\n");
    return 2;
}
