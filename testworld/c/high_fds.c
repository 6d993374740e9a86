/* Holds 70,000 descriptors and connects on fds above 69,000 to the echo server named by
 * argv[1], by name and by dummy (see programs::C_HIGH_FDS). */
int main(int argc, char **argv) {
    // 70,000 descriptors; where the hard limit is lower and cannot be raised (no
    // CAP_SYS_RESOURCE), as many as it allows, and the test says so.
    int top = 70000;
    struct rlimit rl = {80000, 80000};
    if (setrlimit(RLIMIT_NOFILE, &rl)) {
        if (getrlimit(RLIMIT_NOFILE, &rl)) die("getrlimit");
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl)) die("setrlimit");
        if (rl.rlim_cur < 70010) top = (int)rl.rlim_cur - 10;
    }
    fprintf(stderr, "top %d\n", top);
    int null = open("/dev/null", O_RDONLY);
    if (null < 0) die("open");
    for (int fd = null + 1; fd < top; fd++)
        if (dup2(null, fd) < 0) die("dup2");
    int high = top - 1000;
    close(high + 1);
    close(high + 2);
    struct sockaddr_in by_name = lookup(argv[1], 7);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    printf("high %d\n", s > high);
    if (connect(s, (struct sockaddr *)&by_name, sizeof by_name)) die("connect by name");
    echo(s, "by name");
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    if (getpeername(s, (struct sockaddr *)&peer, &len)) die("getpeername");
    printf("peer %d %d %d\n", peer.sin_family == AF_INET,
           peer.sin_addr.s_addr == by_name.sin_addr.s_addr, ntohs(peer.sin_port));
    // The dummy itself, as a numeric address.
    struct sockaddr_in by_dummy;
    memset(&by_dummy, 0, sizeof by_dummy);
    by_dummy.sin_family = AF_INET;
    by_dummy.sin_port = htons(7);
    inet_pton(AF_INET, inet_ntoa(by_name.sin_addr), &by_dummy.sin_addr);
    int t = socket(AF_INET, SOCK_STREAM, 0);
    printf("high %d\n", t > high);
    if (connect(t, (struct sockaddr *)&by_dummy, sizeof by_dummy)) die("connect by dummy");
    echo(t, "by dummy");
    return 0;
}
