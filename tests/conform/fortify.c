/*
 * The calls a program built with _FORTIFY_SOURCE makes (Debian builds its packages with
 * -O2 -D_FORTIFY_SOURCE=2; the driver builds every conformance program that way too, and plain
 * -O0): read, recv, recvfrom, poll and ppoll on a buffer whose size the compiler knows, with a
 * length it cannot prove in bounds, become __read_chk, __recv_chk, __recvfrom_chk, __poll_chk
 * and __ppoll_chk. Lengths here come from a volatile, so the fortified build imports all five
 * (the driver checks that with nm). Also fcntl(F_SETFL, O_NONBLOCK), which is fcntl64 in the
 * fortified build (built with 64-bit file offsets, as nginx and python3 are), and a length
 * larger than the buffer in a child on its own connection: glibc's "buffer overflow detected"
 * abort in the fortified build (nothing is read in the plain one).
 *
 *   fortify server PATH / fortify client PATH
 */
#include "conform.h"

#include <sys/resource.h>

/* 1, read at run time: the compiler cannot prove RT(n) in bounds. */
static volatile size_t rt_one = 1;
#define RT(n) ((size_t)(n) * rt_one)

static void server(const char *path) {
    int lfd = listen_on(path);
    int fd = accept_one(lfd);
    char buf[32];
    struct pollfd p[2];
    int pipefd[2];
    CHECK(pipe(pipefd) == 0);

    memset(p, 0, sizeof p);
    p[0].fd = fd;
    p[0].events = POLLIN;
    int rc = poll(p, RT(1), -1);
    say("poll(nfds 1) -> %d %s", rc, pollstr(p[0].revents));
    SHOW_DATA("read 5", buf, read(fd, buf, RT(5)));
    SHOW_DATA("recv 4 MSG_PEEK", buf, recv(fd, buf, RT(4), MSG_PEEK));
    SHOW_DATA("recv 10", buf, recv(fd, buf, RT(10), 0));
    SHOW_DATA("recvfrom 3", buf, recvfrom(fd, buf, RT(3), 0, NULL, NULL));
    struct sockaddr_un from;
    socklen_t fromlen = sizeof from;
    SHOW_DATA("recvfrom 32 with an address buffer", buf, recvfrom(fd, buf, RT(sizeof buf), 0, (struct sockaddr *)&from, &fromlen));
    say("  address length %u", (unsigned)fromlen);

    set_nonblock(fd, 1);
    say("O_NONBLOCK after F_SETFL: %s", fcntl(fd, F_GETFL) & O_NONBLOCK ? "yes" : "no");
    SHOW_DATA("read empty, non-blocking", buf, read(fd, buf, RT(8)));
    SHOW_DATA("recv empty, non-blocking", buf, recv(fd, buf, RT(8), 0));
    SHOW_DATA("recvfrom empty, non-blocking", buf, recvfrom(fd, buf, RT(8), 0, NULL, NULL));
    set_nonblock(fd, 0);
    SHOW_DATA("recv empty MSG_DONTWAIT", buf, recv(fd, buf, RT(8), MSG_DONTWAIT));

    struct timespec zero = {0, 0};
    rc = ppoll(p, RT(1), &zero, NULL);
    say("ppoll(nfds 1, timeout 0) empty -> %d %s", rc, pollstr(p[0].revents));
    send_byte(fd, 'n');
    rc = ppoll(p, RT(1), NULL, NULL);
    say("ppoll(nfds 1) -> %d %s", rc, pollstr(p[0].revents));
    SHOW_DATA("read 6", buf, read(fd, buf, RT(6)));

    p[1].fd = pipefd[0];
    p[1].events = POLLIN;
    send_byte(fd, 'm');
    rc = poll(p, RT(2), -1);
    say("poll(nfds 2: socket, empty pipe) -> %d", rc);
    say("  socket %s", pollstr(p[0].revents));
    say("  pipe %s", pollstr(p[1].revents));
    SHOW_DATA("recv 5", buf, recv(fd, buf, RT(5), 0));

    send_byte(fd, 'w');
    SHOW_DATA("recv 4 MSG_WAITALL (sent in two writes)", buf, recv(fd, buf, RT(4), MSG_WAITALL));

    send_byte(fd, 'e');
    p[0].events = POLLIN | POLLRDHUP;
    rc = poll(p, RT(1), -1);
    say("poll(nfds 1) after the peer's SHUT_WR -> %d %s", rc, pollstr(p[0].revents));
    SHOW_DATA("read at EOF", buf, read(fd, buf, RT(8)));
    SHOW_DATA("recv at EOF", buf, recv(fd, buf, RT(8), 0));
    SHOW_DATA("recvfrom at EOF", buf, recvfrom(fd, buf, RT(8), 0, NULL, NULL));
    write_str(fd, "bye");
    SHOW("close", close(fd));

    /* The client's child, on a connection of its own. */
    int child = accept_one(lfd);
    SHOW_DATA("read from the child's connection", buf, read(child, buf, RT(sizeof buf)));
    SHOW("close the child's connection", close(child));
}

static void client(const char *path) {
    int fd = connect_to(path);
    write_str(fd, "hello fortified world!");
    expect_byte(fd, 'n');
    write_str(fd, "second");
    expect_byte(fd, 'm');
    write_str(fd, "third");
    expect_byte(fd, 'w');
    write_str(fd, "wa");
    write_str(fd, "it");
    expect_byte(fd, 'e');
    SHOW("shutdown SHUT_WR", shutdown(fd, SHUT_WR));
    char buf[32];
    /* Bytes from the accepted socket come from the listener's address. */
    struct sockaddr_un from;
    socklen_t fromlen = sizeof from;
    memset(&from, 0, sizeof from);
    SHOW_DATA("recvfrom 3 MSG_WAITALL with an address buffer", buf, recvfrom(fd, buf, RT(3), MSG_WAITALL, (struct sockaddr *)&from, &fromlen));
    say("  address: the server's path: %s, length right: %s", strcmp(from.sun_path, path) == 0 ? "yes" : "no",
        fromlen == offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1 ? "yes" : "no");
    SHOW_DATA("read until the server closes", buf, read(fd, buf, RT(sizeof buf)));
    SHOW("close", close(fd));

    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        struct rlimit none = {0, 0};
        CHECK(setrlimit(RLIMIT_CORE, &none) == 0);
        int own = connect_to(path);
        char small[16];
#if defined(__USE_FORTIFY_LEVEL) && __USE_FORTIFY_LEVEL > 0
        /* 32 bytes into 16: glibc aborts before reading. */
        ssize_t n = read(own, small, RT(32));
#else
        ssize_t n = 0;
        (void)own;
#endif
        (void)small;
        _exit(n == 0 ? 0 : 2);
    }
    say("child reading 32 bytes into 16: %s", statusstr(wait_child(pid)));
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    return run_role(argc, argv, server, client);
}
