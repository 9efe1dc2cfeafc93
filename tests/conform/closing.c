/*
 * close_range and closefrom on connected sockets, with the numbers reused afterwards.
 *
 *   closing server PATH range   / closing client PATH range
 *   closing server PATH cloexec / closing client PATH cloexec
 *                                 (the client's child runs this program as: closing image G H)
 *
 * range: close_range on one socket, then on two at once (CLOSE_RANGE_UNSHARE), then closefrom(3)
 * after moving a connection onto fd 0 (the inetd pattern), which must keep working. After each, a pipe or socketpair that gets one of the closed
 * numbers must carry its own bytes (none reach the old peer), and each peer reads what was
 * sent before the close, then EOF.
 *
 * cloexec: close_range(CLOSE_RANGE_CLOEXEC) on one of two connections, then fork and exec: the
 * new image does not have that socket, uses the other one; the first one's peer reads what the
 * parent sent before and after the exec, then EOF once the parent closes it.
 *
 * closeloop: a daemon's close loop over every number but its socket's (fds it never opened:
 * nothing to close), then a pipe, a fork and exec that hands the socket to the new image, and
 * the pipe still works after the socket is closed.
 *                                 (the client's child runs this program as: closing image1 F)
 */
#include "conform.h"

/* Opens pipes (or socketpairs) until one end gets fd number `num`, keeping the others open
 * meanwhile; sends bytes through that number (or into the pipe that number reads) and prints
 * what arrived at the other end. */
static void reuse_check(const char *what, int num, int sockets) {
    int held[256], nheld = 0, found = 0;
    for (int i = 0; i < 100 && !found; i++) {
        int p[2];
        CHECK((sockets ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) : pipe2(p, O_CLOEXEC)) == 0);
        if (p[0] != num && p[1] != num) {
            held[nheld++] = p[0];
            held[nheld++] = p[1];
            continue;
        }
        found = 1;
        int other = p[0] == num ? p[1] : p[0];
        /* A pipe is written at p[1]; a socketpair through the reused number. */
        int from = sockets ? num : p[1], to = sockets ? other : p[0];
        char buf[16];
        write_full(from, "own-bytes", 9);
        size_t got = read_full(to, buf, 9);
        say("a %s that got the socket's old number carries its own bytes: %s", what, quoted(buf, (long)got));
        CHECK(close(p[0]) == 0 && close(p[1]) == 0);
    }
    for (int i = 0; i < nheld; i++) CHECK(close(held[i]) == 0);
    if (!found) die("no %s got fd %d", what, num);
}

/* Reads exactly strlen(s) bytes, prints them, then prints what the next read returns. */
static void read_then_eof(const char *who, int fd, size_t n) {
    char buf[64];
    CHECK(n < sizeof buf);
    size_t got = read_full(fd, buf, n);
    say("%s: read %s", who, quoted(buf, (long)got));
    SHOW_DATA("  then", buf, read(fd, buf, sizeof buf));
}

static void range_server(const char *path) {
    int lfd = listen_on(path);
    int c1 = accept_one(lfd);
    read_then_eof("1", c1, 3);
    int c2 = accept_one(lfd), c3 = accept_one(lfd);
    read_then_eof("2", c2, 3);
    read_then_eof("3", c3, 5);
    int c4 = accept_one(lfd), c5 = accept_one(lfd), c6 = accept_one(lfd);
    read_then_eof("5", c5, 4);
    read_then_eof("6", c6, 4);
    expect_str(c4, "six");
    write_str(c4, "ack");
    read_then_eof("4", c4, 0);
    CHECK(close(c1) == 0 && close(c2) == 0 && close(c3) == 0 && close(c4) == 0 && close(c5) == 0 && close(c6) == 0);
}

static void range_client(const char *path) {
    int a = connect_to(path);
    write_str(a, "one");
    SHOW("close_range(first socket)", close_range(a, a, 0));
    SHOW("F_GETFD on its number", fcntl(a, F_GETFD));
    reuse_check("pipe", a, 0);

    int b = connect_to(path), c = connect_to(path);
    write_str(b, "two");
    write_str(c, "three");
    SHOW("close_range(over two sockets, CLOSE_RANGE_UNSHARE)", close_range(b < c ? b : c, b < c ? c : b, CLOSE_RANGE_UNSHARE));
    reuse_check("socketpair", c, 1);

    /* The inetd pattern: the fourth connection moves onto fd 0, then closefrom(3). */
    int f = connect_to(path), d = connect_to(path), e = connect_to(path);
    int d2 = fcntl(d, F_DUPFD, d + 100);
    CHECK(d2 > d);
    write_str(d, "four");
    write_str(e, "five");
    SHOW("dup2 the fourth connection onto fd 0", dup2(f, 0));
    SHOW("close its first number", close(f));
    errno = 0;
    closefrom(3);
    say("closefrom(3), errno %s", errname(errno));
    SHOW("F_GETFD on a closed copy", fcntl(d2, F_GETFD));
    /* (At once: a library, the hook included, may take a free number for itself later.) */
    reuse_check("pipe", e, 0);
    int keep[2];
    CHECK(pipe(keep) == 0);
    write_str(0, "six");
    expect_str(0, "ack");
    say("the connection on fd 0 still works");
    SHOW("close it", close(0));
    char buf[8];
    SHOW("a pipe opened before that close: write", write(keep[1], "kept", 4));
    SHOW_DATA("  read", buf, read(keep[0], buf, sizeof buf));
    CHECK(close(keep[0]) == 0 && close(keep[1]) == 0);
}

static void image(int g, int h) {
    SHOW("image: F_GETFD on the close-on-exec socket", fcntl(g, F_GETFD));
    write_str(h, "from-image");
    expect_str(h, "ack-image");
    say("image: the inherited socket works");
    SHOW("image: close it", close(h));
}

static void cloexec_server(const char *path) {
    int lfd = listen_on(path);
    int c1 = accept_one(lfd), c2 = accept_one(lfd);
    expect_str(c2, "from-image");
    write_str(c2, "ack-image");
    read_then_eof("1", c1, 21);
    read_then_eof("2", c2, 0);
    CHECK(close(c1) == 0 && close(c2) == 0);
}

static void cloexec_client(const char *path) {
    int g = connect_to(path), h = connect_to(path);
    SHOW("close_range(first socket, CLOSE_RANGE_CLOEXEC)", close_range(g, g, CLOSE_RANGE_CLOEXEC));
    SHOW("F_GETFD on it", fcntl(g, F_GETFD));
    SHOW("F_GETFD on the other", fcntl(h, F_GETFD));
    write_str(g, "before-exec");
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        char gs[16], hs[16];
        snprintf(gs, sizeof gs, "%d", g);
        snprintf(hs, sizeof hs, "%d", h);
        execl("/proc/self/exe", "closing", "image", gs, hs, (char *)NULL);
        die("execl: %s", errname(errno));
    }
    int st = wait_child(child);
    say("child %s", statusstr(st));
    write_str(g, "after-exec");
    SHOW("close the close-on-exec socket", close(g));
    SHOW("close the other", close(h));
}

static void loop_image(int f) {
    write_str(f, "from-image");
    expect_str(f, "ack");
    say("image: the inherited socket works");
    SHOW("image: close it", close(f));
}

static void closeloop_server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    expect_str(c, "after-loop");
    say("read after-loop");
    expect_str(c, "from-image");
    say("read from-image");
    write_str(c, "ack");
    read_then_eof("1", c, 0);
    CHECK(close(c) == 0);
}

static void closeloop_client(const char *path) {
    /* (Fds inherited from whoever started the test are left alone.) */
    static char inherited[1024];
    for (int fd = 3; fd < 1024; fd++) inherited[fd] = fcntl(fd, F_GETFD) >= 0;
    int f = connect_to(path);
    int closed = 0;
    for (int fd = 3; fd < 1024; fd++)
        if (fd != f && !inherited[fd] && close(fd) == 0) closed++;
    say("a close loop over every number the program never opened closed %d fds", closed);
    int p[2];
    CHECK(pipe(p) == 0);
    write_str(f, "after-loop");
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        CHECK(close(p[0]) == 0 && close(p[1]) == 0);
        char fs[16];
        snprintf(fs, sizeof fs, "%d", f);
        execl("/proc/self/exe", "closing", "image1", fs, (char *)NULL);
        die("execl: %s", errname(errno));
    }
    int st = wait_child(child);
    say("child %s", statusstr(st));
    SHOW("close the socket", close(f));
    char buf[8];
    SHOW("write to the pipe", write(p[1], "pipe", 4));
    SHOW_DATA("read from the pipe", buf, read(p[0], buf, sizeof buf));
    CHECK(close(p[0]) == 0 && close(p[1]) == 0);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc == 4 && !strcmp(argv[1], "image")) {
        image(atoi(argv[2]), atoi(argv[3]));
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "image1")) {
        loop_image(atoi(argv[2]));
        return 0;
    }
    const char *path;
    int server = parse_role(argc, argv, &path);
    if (argc != 4) die("usage: closing server|client PATH range|cloexec|closeloop");
    if (!strcmp(argv[3], "range")) server ? range_server(path) : range_client(path);
    else if (!strcmp(argv[3], "cloexec")) server ? cloexec_server(path) : cloexec_client(path);
    else if (!strcmp(argv[3], "closeloop")) server ? closeloop_server(path) : closeloop_client(path);
    else die("unknown part %s", argv[3]);
    return 0;
}
