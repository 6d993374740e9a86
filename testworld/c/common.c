/* What testworld's C test programs share (compiled in front of each: see programs.rs):
 * resolving a name to its dummy, a connected echo round trip, errno names. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in lookup(const char *name, int port) {
    struct addrinfo hints = {0}, *res;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(name, NULL, &hints, &res);
    if (rc) { fprintf(stderr, "getaddrinfo: %s\n", gai_strerror(rc)); exit(2); }
    struct sockaddr_in a = *(struct sockaddr_in *)res->ai_addr;
    a.sin_port = htons(port);
    freeaddrinfo(res);
    return a;
}

static const char *err(int e) {
    switch (e) {
    case 0: return "ok";
    case EINTR: return "EINTR";
    case EALREADY: return "EALREADY";
    case EINPROGRESS: return "EINPROGRESS";
    case EISCONN: return "EISCONN";
    case ENOTSOCK: return "ENOTSOCK";
    case ENETUNREACH: return "ENETUNREACH";
    default: return strerror(e);
    }
}

static void die(const char *what) { fprintf(stderr, "%s: %s\n", what, strerror(errno)); exit(1); }

/// Sends `msg` on the connected `fd` and reads the echo back.
static void echo(int fd, const char *msg) {
    char buf[64] = {0};
    if (write(fd, msg, strlen(msg)) != (ssize_t)strlen(msg)) die("write");
    size_t got = 0;
    while (got < strlen(msg)) {
        ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        if (n <= 0) die("read");
        got += n;
    }
    printf("echo %s\n", buf);
}
