/*
 * A prefork server: the listener is created before fork, and the children accept.
 *
 *   prefork server PATH NCHILD NCONN / prefork client PATH NCONN
 *
 * Each child accepts, echoes one 8-byte message, reads EOF, closes and reports one byte on a
 * pipe to the parent. Which child serves which connection is up to the kernel, so only the
 * total is printed. The parent ends the children with SIGTERM once NCONN were served.
 */
#include "conform.h"

static void child_loop(int lfd, int report) {
    for (;;) {
        int c = accept_one(lfd);
        char buf[8];
        CHECK(read_full(c, buf, 8) == 8);
        write_full(c, buf, 8);
        char tail;
        CHECK(read(c, &tail, 1) == 0);
        CHECK(close(c) == 0);
        write_full(report, "+", 1);
    }
}

static void server(const char *path, int nchild, int nconn) {
    int lfd = listen_on(path);
    int p[2];
    CHECK(pipe(p) == 0);
    pid_t *kids = calloc((size_t)nchild, sizeof *kids);
    CHECK(kids);
    for (int i = 0; i < nchild; i++) {
        kids[i] = fork();
        CHECK(kids[i] >= 0);
        if (kids[i] == 0) {
            close(p[0]);
            child_loop(lfd, p[1]);
        }
    }
    close(p[1]);
    int served = 0;
    char b;
    while (served < nconn) {
        ssize_t r = read(p[0], &b, 1);
        if (r < 0 && errno == EINTR) continue;
        CHECK(r == 1);
        served++;
    }
    say("served %d connections", served);
    for (int i = 0; i < nchild; i++) kill(kids[i], SIGTERM);
    for (int i = 0; i < nchild; i++) say("child %d %s", i, statusstr(wait_child(kids[i])));
}

static void client(const char *path, int nconn) {
    int ok = 0;
    for (int i = 0; i < nconn; i++) {
        int fd = connect_to(path);
        char msg[16], back[8];
        snprintf(msg, sizeof msg, "msg-%04d", i % 10000);
        write_full(fd, msg, 8);
        if (read_full(fd, back, 8) == 8 && memcmp(msg, back, 8) == 0) ok++;
        CHECK(close(fd) == 0);
    }
    say("%d of %d echoes ok", ok, nconn);
}

int main(int argc, char **argv) {
    const char *path;
    if (parse_role(argc, argv, &path)) {
        if (argc != 5) die("usage: prefork server PATH NCHILD NCONN");
        server(path, atoi(argv[3]), atoi(argv[4]));
    } else {
        if (argc != 4) die("usage: prefork client PATH NCONN");
        client(path, atoi(argv[3]));
    }
    return 0;
}
