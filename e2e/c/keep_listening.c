/* A plain TCP server on 0.0.0.0:PORT (argv[1]) for the listener-restart tests: serves
 * "static\n" to each connection, blocking in accept(); an accept error is printed and
 * accept is called again at once (a listener that stays broken would spin here, which the
 * test measures). With "refusal" as argv[2] it instead waits for a line on stdin, then
 * reports: poll(POLLIN) on the listener (up to 10 s), accept's result and errno, and poll
 * again (1 s): what a listener whose re-registration was refused looks like. With "closefrom"
 * it closes every descriptor above the listener (closefrom(3), as daemons do), waits for a
 * line, and reports poll(POLLIN) on the listener over 1 s: 0 while nothing waits. With "udp"
 * it is a UDP server on that port instead, answering each datagram with "udp " and the
 * datagram (blocking in recvfrom; an error is printed and recvfrom called again at once). */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static int udp_server(struct sockaddr_in *a) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (bind(s, (struct sockaddr *)a, sizeof *a) != 0) {
        perror("bind");
        return 1;
    }
    printf("bound\n");
    fflush(stdout);
    for (;;) {
        char buf[512];
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(s, buf + 4, sizeof buf - 4, 0, (struct sockaddr *)&from, &len);
        if (n < 0) {
            fprintf(stderr, "recvfrom: %s\n", strerror(errno));
            continue;
        }
        memcpy(buf, "udp ", 4);
        sendto(s, buf, (size_t)n + 4, 0, (struct sockaddr *)&from, len);
    }
}

int main(int argc, char **argv) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    if (argc > 2 && strcmp(argv[2], "udp") == 0)
        return udp_server(&a);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 16) != 0) {
        perror("listen");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    if (argc > 2 && strcmp(argv[2], "closefrom") == 0) {
        closefrom(s + 1);
        printf("closed from %d\n", s + 1);
        fflush(stdout);
        char line[16];
        if (!fgets(line, sizeof line, stdin))
            return 1;
        struct pollfd p = {s, POLLIN, 0};
        int n = poll(&p, 1, 1000);
        printf("poll %d\n", n);
        fflush(stdout);
        return 0;
    }
    if (argc > 2 && strcmp(argv[2], "refusal") == 0) {
        char line[16];
        if (!fgets(line, sizeof line, stdin))
            return 1;
        struct pollfd p = {s, POLLIN, 0};
        int n = poll(&p, 1, 10000);
        printf("poll %d %d\n", n, (p.revents & POLLIN) != 0);
        int c = accept(s, NULL, NULL);
        printf("accept %d errno %d\n", c < 0 ? -1 : 0, c < 0 ? errno : 0);
        p.revents = 0;
        n = poll(&p, 1, 1000);
        printf("poll again %d\n", n);
        fflush(stdout);
        return 0;
    }
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            fprintf(stderr, "accept: %s\n", strerror(errno));
            continue;
        }
        char buf[512];
        ssize_t got = read(c, buf, sizeof buf);
        (void)got;
        const char *r = "HTTP/1.0 200 OK\r\n\r\nstatic\n";
        ssize_t put = write(c, r, strlen(r));
        (void)put;
        close(c);
    }
}
