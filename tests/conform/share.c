/*
 * A child shares the connection, moves bytes on it and exits; then the parent talks long
 * enough for the connection to migrate, and streams.
 *
 *   share server PATH HOW / share client PATH HOW
 *   (children use this program as: share child-read FD | share child-write FD)
 *
 * HOW is how each end's child is made:
 *   fork       fork(); the child (this image, with the hook) does its part and _exit()s
 *   fork-early (client only) the socket is made and forked before it connects; the child
 *              writes once its parent has connected it
 *   fork-epoll (server only) as fork, and the parent registered the connection in an epoll
 *              instance first (data 1), which the child changes (data 2); the parent waits
 *              in it before it reads the stream
 *   fork-exec  fork(), then the child execs this program (a new image)
 *   spawn      posix_spawn of this program (a new image)
 *
 * Client: makes a child that writes the stream's first 64 bytes, waits for it, writes 300
 * more, and reads the line the server's child writes. Server: makes a child that reads the
 * first 100 bytes and writes "from-child\n", waits for it, reads the other 264. Each child
 * is made before its parent's first call on the connection (which would claim). Then 30 round
 * trips of one byte a couple of milliseconds apart (the connection migrates meanwhile when
 * hooked: every connection claims at once in the run that migrates), then the client writes
 * 30 000 bytes and shuts its side down; the server reads to EOF, reports, says "done" and
 * closes.
 *
 * The bytes the children moved are part of the stream the parents migrate: a parent that did
 * not count them switches at the wrong place (a stray byte, lost bytes or a hang).
 */
#include "conform.h"

#include <spawn.h>

extern char **environ;

static const char *self;

static void find_self(void) { self = self_path(); }

/* The server's child: the stream's bytes 0..100, then a line for the client. */
static int child_read(int fd) {
    char buf[100];
    size_t got = read_full(fd, buf, sizeof buf);
    if (got != sizeof buf || !pat_check(buf, 0, got)) return 1;
    write_str(fd, "from-child\n");
    return 0;
}

/* The client's child: the stream's bytes 0..64. */
static int child_write(int fd) {
    char buf[64];
    pat_fill(buf, 0, sizeof buf);
    write_full(fd, buf, sizeof buf);
    return 0;
}

/* fork-epoll (server only): the parent registered the connection in this instance (data 1)
 * before the fork; the child changes the registration (data 2) before it reads. */
static int shared_ep = -1;

static void child_moves_registration(int fd) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 2};
    if (shared_ep >= 0 && epoll_ctl(shared_ep, EPOLL_CTL_MOD, fd, &ev) != 0) _exit(2);
}

/* Makes the child of `how` doing `what` ("child-read" or "child-write") on `fd`; returns its
 * wait status. */
static int run_child(const char *how, const char *what, int fd) {
    char fdstr[16];
    snprintf(fdstr, sizeof fdstr, "%d", fd);
    char *args[] = {"share", (char *)what, fdstr, NULL};
    pid_t pid;
    if (!strcmp(how, "spawn")) {
        int rc = posix_spawn(&pid, self, NULL, NULL, args, environ);
        if (rc != 0) die("posix_spawn: %s", errname(rc));
    } else if (!strcmp(how, "fork") || !strcmp(how, "fork-exec") || !strcmp(how, "fork-epoll")) {
        pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            child_moves_registration(fd);
            if (strcmp(how, "fork-exec") != 0) _exit(!strcmp(what, "child-read") ? child_read(fd) : child_write(fd));
            execve(self, args, environ);
            _exit(127);
        }
    } else {
        die("unknown way %s", how);
    }
    return wait_child(pid);
}

static void server(const char *path, const char *how) {
    find_self();
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    CHECK(fcntl(lfd, F_SETFD, FD_CLOEXEC) == 0);
    static char buf[30000];
    if (!strcmp(how, "fork-epoll")) {
        shared_ep = epoll_create1(EPOLL_CLOEXEC);
        CHECK(shared_ep >= 0);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1};
        CHECK(epoll_ctl(shared_ep, EPOLL_CTL_ADD, c, &ev) == 0);
    }
    say("child %s", statusstr(run_child(how, "child-read", c)));
    size_t got = read_full(c, buf, 264);
    say("then read %zu ok: %s", got, pat_check(buf, 100, got) ? "yes" : "no");
    int rounds_ok = 1;
    for (int i = 0; i < 30; i++) {
        char b = (char)('a' + i % 26), back = 0;
        write_full(c, &b, 1);
        if (read_full(c, &back, 1) != 1 || back != b) rounds_ok = 0;
        usleep(2000);
    }
    say("30 round trips ok: %s", rounds_ok ? "yes" : "no");
    if (shared_ep >= 0) {
        struct epoll_event ev;
        int n = epoll_wait(shared_ep, &ev, 1, -1);
        say("epoll_wait -> %d, data %llu", n, n == 1 ? (unsigned long long)ev.data.u64 : 0ULL);
    }
    got = read_full(c, buf, sizeof buf);
    char extra = 0;
    ssize_t more = read(c, &extra, 1);
    say("read %zu ok: %s, then %zd", got, pat_check(buf, 364, got) ? "yes" : "no", more);
    write_str(c, "done\n");
    SHOW("close", close(c));
}

/* fork-early: the socket is made and forked before it connects; the child writes once the
 * parent has connected it (and warmed it up). Returns the connected socket. */
static int connect_forked_early(const char *path) {
    int go[2];
    CHECK(pipe(go) == 0);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char x;
        close(go[1]);
        if (read(go[0], &x, 1) != 1) _exit(1);
        _exit(child_write(fd));
    }
    close(go[0]);
    socklen_t len;
    struct sockaddr_un addr = address(path, &len);
    CHECK(connect(fd, (struct sockaddr *)&addr, len) == 0);
    warm_up(fd, 0);
    CHECK(write(go[1], "x", 1) == 1);
    close(go[1]);
    say("child %s", statusstr(wait_child(pid)));
    return fd;
}

static void client(const char *path, const char *how) {
    find_self();
    int early = !strcmp(how, "fork-early");
    int fd = early ? connect_forked_early(path) : connect_to(path);
    static char buf[30000];
    if (!early) say("child %s", statusstr(run_child(how, "child-write", fd)));
    pat_fill(buf, 64, 300);
    write_full(fd, buf, 300);
    char line[64];
    size_t n = 0;
    while (n < sizeof line - 1 && read_full(fd, line + n, 1) == 1 && line[n++] != '\n') {
    }
    line[n] = 0;
    line[strcspn(line, "\n")] = 0;
    say("got: %s", line);
    for (int i = 0; i < 30; i++) {
        char b;
        if (read_full(fd, &b, 1) != 1) break;
        write_full(fd, &b, 1);
    }
    pat_fill(buf, 364, sizeof buf);
    write_full(fd, buf, sizeof buf);
    SHOW("shutdown SHUT_WR", shutdown(fd, SHUT_WR));
    n = read_full(fd, line, sizeof line - 1);
    line[n] = 0;
    line[strcspn(line, "\n")] = 0;
    say("then: %s", line);
    SHOW("close", close(fd));
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "child-read")) return child_read(atoi(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "child-write")) return child_write(atoi(argv[2]));
    const char *path;
    if (argc != 4) die("usage: share server|client PATH HOW");
    if (parse_role(argc, argv, &path)) server(path, argv[3]);
    else client(path, argv[3]);
    return 0;
}
