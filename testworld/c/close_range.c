/* Outsourced sockets (two UDP associations, a connected TCP socket) closed with close_range,
 * then their numbers reused by a pipe, a file and a socket; then the same with closefrom
 * (see programs::C_CLOSE_RANGE). */
static int associated_udp(struct sockaddr_in *to) {
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    if (sendto(u, "u", 1, 0, (struct sockaddr *)to, sizeof *to) != 1) die("sendto");
    char c;
    if (recv(u, &c, 1, 0) != 1) die("recv");
    return u;
}

int main(int argc, char **argv) {
    struct sockaddr_in echo_addr = lookup(argv[1], 7);
    int a = associated_udp(&echo_addr);
    int b = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(b, (struct sockaddr *)&echo_addr, sizeof echo_addr)) die("connect");
    int c = associated_udp(&echo_addr);
    printf("consecutive %d\n", b == a + 1 && c == b + 1);
    if (close_range(a, c, 0)) die("close_range");

    // The numbers come back as a pipe and a file: they are what they are now.
    int p[2];
    if (pipe(p)) die("pipe");
    int f = open("/dev/null", O_RDONLY);
    printf("reused %d\n", p[0] == a && p[1] == b && f == c);
    char buf[16] = {0};
    if (write(p[1], "pipe data", 9) != 9) die("write pipe");
    ssize_t n = read(p[0], buf, sizeof buf - 1);
    printf("pipe %zd %s\n", n, n > 0 ? buf : err(errno));
    struct sockaddr_in name;
    socklen_t len = sizeof name;
    int rc = getsockname(f, (struct sockaddr *)&name, &len);
    printf("getsockname %s\n", rc == 0 ? "ok" : err(errno));
    int domain;
    len = sizeof domain;
    rc = getsockopt(p[1], SOL_SOCKET, SO_DOMAIN, &domain, &len);
    printf("SO_DOMAIN %s\n", rc == 0 ? "ok" : err(errno));
    close(p[0]);
    close(p[1]);
    close(f);

    // And as a socket again: outsourced afresh.
    int s = socket(AF_INET, SOCK_STREAM, 0);
    printf("socket again %d\n", s == a);
    if (connect(s, (struct sockaddr *)&echo_addr, sizeof echo_addr)) die("connect again");
    echo(s, "again");

    // closefrom: glibc's calls close_range inside libc.
    int d = associated_udp(&echo_addr);
    closefrom(d);
    f = open("/dev/null", O_RDONLY);
    len = sizeof name;
    rc = getsockname(f, (struct sockaddr *)&name, &len);
    printf("closefrom %d %s %zd\n", f == d, rc == 0 ? "ok" : err(errno), read(f, buf, 1));
    return 0;
}
