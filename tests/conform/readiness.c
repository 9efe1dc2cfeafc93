/*
 * Readiness calls as the kernel answers them, beyond the echo loops:
 *
 *   readiness server PATH MODE / readiness client PATH
 *
 * MODE select-big: the connection is moved to fd 1500 (RLIMIT_NOFILE raised) and waited on
 * with select and pselect over a malloc'ed bitmap of 1501 bits (larger than FD_SETSIZE; the
 * bits are set by hand: glibc's FD_SET stops at FD_SETSIZE, and fortified builds abort there).
 *
 * MODE epoll-fork: one epoll instance shared by the server and its forked children, one
 * interest list as in the kernel: EPOLL_CTL_MOD/DEL/ADD made in a child are the parent's,
 * EPOLLONESHOT disarmed and edge-triggered edges taken in one process are so in the other, and
 * a second connection accepted and registered by a child after the fork is reported to the
 * parent (which does not hold it); a child asleep in the shared instance is woken by data.
 *
 * MODE epoll-dup: the registered fd is replaced (dup2 over it) or closed while a dup keeps the
 * connection open: the registration stays (it belongs to the open file) and reports with its
 * data; EPOLL_CTL_DEL of the number (a pipe now) is ENOENT; the dup registered too reports
 * beside it.
 *
 * The client sends the next word of its list each time the server sends it a 'g' (on the
 * first connection); on a 'c' it makes a second connection (and says 'k' on the first when
 * it is up), and on an 'h' it sends the next word on that one. It prints what it read when the server closes. The server only asks with timeout 0 after a blocking
 * wait showed that the word arrived, so every answer is fixed.
 */
#include "conform.h"

#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/select.h>

static const char *const words[] = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"};

/* A bitmap of `nfds` bits laid out as the kernel reads an fd_set: bit fd%64 of word fd/64. */
typedef unsigned long word_t;
#define WORD_BITS (8 * sizeof(word_t))

static word_t *bitmap(size_t nfds) { return calloc((nfds + WORD_BITS - 1) / WORD_BITS, sizeof(word_t)); }
static void bit_set(word_t *m, int fd) { m[fd / WORD_BITS] |= 1UL << (fd % WORD_BITS); }
static int bit_get(const word_t *m, int fd) { return (m[fd / WORD_BITS] >> (fd % WORD_BITS)) & 1; }
static int bits_total(const word_t *m, size_t nfds) {
    int n = 0;
    for (size_t w = 0; w < (nfds + WORD_BITS - 1) / WORD_BITS; w++) n += __builtin_popcountl(m[w]);
    return n;
}

static void raise_nofile(rlim_t want) {
    struct rlimit r;
    CHECK(getrlimit(RLIMIT_NOFILE, &r) == 0);
    if (r.rlim_cur < want) {
        CHECK(r.rlim_max >= want);
        r.rlim_cur = want;
        CHECK(setrlimit(RLIMIT_NOFILE, &r) == 0);
    }
}

/* select (or pselect) on `c` in a big bitmap; prints "what -> rc rd=B wr=B total=N". */
static int big_select(const char *what, int c, int nfds, int want_rd, int want_wr, int timeout_ms, int use_pselect) {
    word_t *rd = bitmap((size_t)nfds), *wr = bitmap((size_t)nfds);
    CHECK(rd && wr);
    if (want_rd) bit_set(rd, c);
    if (want_wr) bit_set(wr, c);
    int rc;
    do {
        if (use_pselect) {
            struct timespec ts = {.tv_sec = timeout_ms / 1000, .tv_nsec = (timeout_ms % 1000) * 1000000L};
            rc = pselect(nfds, (fd_set *)(want_rd ? (void *)rd : NULL), (fd_set *)(want_wr ? (void *)wr : NULL), NULL,
                         timeout_ms < 0 ? NULL : &ts, NULL);
        } else {
            struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000L};
            rc = select(nfds, (fd_set *)(want_rd ? (void *)rd : NULL), (fd_set *)(want_wr ? (void *)wr : NULL), NULL,
                        timeout_ms < 0 ? NULL : &tv);
        }
    } while (rc < 0 && errno == EINTR);
    if (rc < 0)
        say("%s -> %s", what, rcstr(rc, errno));
    else
        say("%s -> %d rd=%d wr=%d total=%d", what, rc, want_rd ? bit_get(rd, c) : -1, want_wr ? bit_get(wr, c) : -1,
            bits_total(rd, (size_t)nfds) + bits_total(wr, (size_t)nfds));
    free(rd);
    free(wr);
    return rc;
}

static void select_big(int c) {
    char buf[64];
    const int high = 1500;
    raise_nofile(2100);
    CHECK(dup2(c, high) == high);
    CHECK(close(c) == 0);
    c = high;
    say("-- select and pselect with the connection at fd %d, bitmaps of %d bits", high, high + 1);
    big_select("select(0) write", c, high + 1, 0, 1, 0, 0);
    big_select("select(0) read, nothing yet", c, high + 1, 1, 0, 0, 0);
    big_select("select(0) read and write", c, high + 1, 1, 1, 0, 0);
    send_byte(c, 'g');
    big_select("select(NULL) read, word asked", c, high + 1, 1, 0, -1, 0);
    big_select("select(0) read and write", c, high + 1, 1, 1, 0, 0);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    big_select("select(0) read, drained", c, high + 1, 1, 0, 0, 0);
    send_byte(c, 'g');
    big_select("pselect(NULL) read, word asked", c, high + 1, 1, 0, -1, 1);
    big_select("pselect(0) read and write", c, high + 1, 1, 1, 0, 1);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    send_byte(c, 'g');
    big_select("select(10s) read, word asked", c, high + 1, 1, 0, 10000, 0);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));

    say("-- nfds beyond the connection, and a closed fd in the set");
    send_byte(c, 'g');
    big_select("select(NULL) nfds 2048", c, 2048, 1, 0, -1, 0);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    {
        const int nfds = high + 1;
        word_t *rd = bitmap((size_t)nfds);
        CHECK(rd);
        bit_set(rd, c);
        bit_set(rd, high - 3); /* not open */
        struct timeval tv = {0, 0};
        SHOW("select(0) with a closed fd", select(nfds, (fd_set *)(void *)rd, NULL, NULL, &tv));
        free(rd);
    }
    say("closing with the connection idle");
    CHECK(close(c) == 0);
}

/* epoll_wait with `timeout`; prints "what -> n EVENTS/data ..." sorted by data. */
static int ewait(const char *what, int ep, int timeout) {
    struct epoll_event ev[8];
    int n;
    do n = epoll_wait(ep, ev, 8, timeout);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        say("%s -> %s", what, rcstr(n, errno));
        return n;
    }
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && ev[j - 1].data.u64 > ev[j].data.u64; j--) {
            struct epoll_event t = ev[j];
            ev[j] = ev[j - 1];
            ev[j - 1] = t;
        }
    char line[512];
    int at = snprintf(line, sizeof line, "%s -> %d", what, n);
    for (int i = 0; i < n; i++)
        at += snprintf(line + at, sizeof line - (size_t)at, " %s/%llu", epollstr(ev[i].events), (unsigned long long)ev[i].data.u64);
    say("%s", line);
    return n;
}

static int ctl(int ep, int op, int fd, unsigned events, unsigned long long data) {
    struct epoll_event ev = {.events = events, .data.u64 = data};
    return epoll_ctl(ep, op, fd, &ev);
}

/* Runs `body` in a forked child, which prints its own lines; the parent waits for it. */
#define IN_CHILD(body)                                                                         \
    do {                                                                                       \
        pid_t pid_ = fork();                                                                   \
        CHECK(pid_ >= 0);                                                                      \
        if (pid_ == 0) {                                                                       \
            body;                                                                              \
            _exit(0);                                                                          \
        }                                                                                      \
        int st_;                                                                               \
        CHECK(waitpid(pid_, &st_, 0) == pid_ && WIFEXITED(st_) && WEXITSTATUS(st_) == 0);      \
    } while (0)

static void epoll_fork(int lfd, int c) {
    char buf[64];
    int ep = epoll_create1(0);
    CHECK(ep >= 0);
    say("-- one interest list across fork");
    SHOW("parent: ADD EPOLLIN data 1", ctl(ep, EPOLL_CTL_ADD, c, EPOLLIN, 1));
    IN_CHILD(SHOW("child: MOD EPOLLIN|EPOLLONESHOT data 2", ctl(ep, EPOLL_CTL_MOD, c, EPOLLIN | EPOLLONESHOT, 2)));
    send_byte(c, 'g');
    ewait("parent: epoll_wait(-1) word asked", ep, -1);
    ewait("parent: epoll_wait(0) one-shot", ep, 0);
    IN_CHILD({
        ewait("child: epoll_wait(0) disarmed by the parent", ep, 0);
        SHOW("child: MOD EPOLLIN|EPOLLET data 3", ctl(ep, EPOLL_CTL_MOD, c, EPOLLIN | EPOLLET, 3));
        ewait("child: epoll_wait(0) re-armed", ep, 0);
        ewait("child: epoll_wait(0) edge taken", ep, 0);
    });
    ewait("parent: epoll_wait(0) edge taken by the child", ep, 0);
    SHOW_DATA("parent: read", buf, read(c, buf, sizeof buf));
    send_byte(c, 'g');
    ewait("parent: epoll_wait(-1) new edge", ep, -1);
    ewait("parent: epoll_wait(0) edge taken", ep, 0);
    SHOW_DATA("parent: read", buf, read(c, buf, sizeof buf));
    IN_CHILD({
        SHOW("child: DEL", epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL));
        SHOW("child: DEL again", epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL));
        SHOW("child: ADD EPOLLIN data 4", ctl(ep, EPOLL_CTL_ADD, c, EPOLLIN, 4));
    });
    ewait("parent: epoll_wait(0) nothing to read", ep, 0);
    SHOW("parent: ADD again", ctl(ep, EPOLL_CTL_ADD, c, EPOLLIN, 5));
    send_byte(c, 'g');
    ewait("parent: epoll_wait(-1) the child's ADD", ep, -1);
    ewait("parent: epoll_wait(0) level-triggered", ep, 0);
    SHOW_DATA("parent: read", buf, read(c, buf, sizeof buf));

    say("-- a child asleep in the shared instance, woken by data the parent asked for");
    {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            ewait("child: epoll_wait(-1)", ep, -1);
            SHOW_DATA("child: read", buf, read(c, buf, sizeof buf));
            _exit(0);
        }
        send_byte(c, 'g');
        int st;
        CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
        ewait("parent: epoll_wait(0) the child read it", ep, 0);
    }

    say("-- a connection accepted by a child after the fork, registered in the shared instance");
    int up[2], down[2];
    CHECK(pipe(up) == 0 && pipe(down) == 0);
    send_byte(c, 'c');
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int c2 = accept_one(lfd);
        char b;
        /* Registered once the client is done with its part of the warm-up (it says so on the
         * first connection), so that its next call on the second one is the word. */
        CHECK(read(down[0], &b, 1) == 1);
        SHOW("child: ADD second connection EPOLLIN data 9", ctl(ep, EPOLL_CTL_ADD, c2, EPOLLIN, 9));
        write_full(up[1], "r", 1);
        CHECK(read(down[0], &b, 1) == 1);
        SHOW_DATA("child: read second connection", buf, read(c2, buf, sizeof buf));
        CHECK(close(c2) == 0);
        _exit(0);
    }
    char b;
    expect_byte(c, 'k');
    write_full(down[1], "a", 1);
    CHECK(read(up[0], &b, 1) == 1);
    ewait("parent: epoll_wait(0) before the word", ep, 0);
    send_byte(c, 'h');
    ewait("parent: epoll_wait(-1) the child's connection", ep, -1);
    ewait("parent: epoll_wait(0) level-triggered", ep, 0);
    write_full(down[1], "g", 1);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ewait("parent: epoll_wait(0) the child closed it", ep, 0);
    send_byte(c, 'g');
    ewait("parent: epoll_wait(-1) the first connection", ep, -1);
    SHOW_DATA("parent: read", buf, read(c, buf, sizeof buf));
    say("closing");
    CHECK(close(ep) == 0);
    CHECK(close(c) == 0);
}

static void epoll_dup(int c) {
    char buf[64];
    int ep = epoll_create1(0);
    CHECK(ep >= 0);
    int p[2];
    CHECK(pipe(p) == 0);
    say("-- the registered fd replaced, a dup keeps the connection");
    SHOW("ADD EPOLLIN data 7", ctl(ep, EPOLL_CTL_ADD, c, EPOLLIN, 7));
    int d = dup(c);
    CHECK(d >= 0);
    /* The registered number now names a pipe (no number is left free for anyone to reuse). */
    SHOW("dup2 a pipe over the registered fd", dup2(p[0], c) == c);
    ewait("epoll_wait(0) nothing yet", ep, 0);
    send_byte(d, 'g');
    ewait("epoll_wait(-1) word asked", ep, -1);
    SHOW("DEL replaced fd", epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL));
    SHOW("MOD replaced fd", ctl(ep, EPOLL_CTL_MOD, c, EPOLLIN, 70));
    SHOW("ADD dup EPOLLIN|EPOLLET data 8", ctl(ep, EPOLL_CTL_ADD, d, EPOLLIN | EPOLLET, 8));
    ewait("epoll_wait(0) both", ep, 0);
    ewait("epoll_wait(0) level-triggered one", ep, 0);
    SHOW_DATA("read dup", buf, read(d, buf, sizeof buf));
    ewait("epoll_wait(0) drained", ep, 0);
    send_byte(d, 'g');
    wait_ready(d, POLLIN);
    ewait("epoll_wait(0) word arrived", ep, 0);
    SHOW_DATA("read dup", buf, read(d, buf, sizeof buf));
    say("-- the second registration's fd closed too, a third fd keeps the connection");
    int e = dup(d);
    CHECK(e >= 0);
    SHOW("close dup", close(d));
    ewait("epoll_wait(0) drained", ep, 0);
    send_byte(e, 'g');
    wait_ready(e, POLLIN);
    ewait("epoll_wait(0) both, through the third fd", ep, 0);
    ewait("epoll_wait(0) level-triggered one", ep, 0);
    SHOW_DATA("read", buf, read(e, buf, sizeof buf));
    SHOW("DEL through the third fd (not the registered one)", epoll_ctl(ep, EPOLL_CTL_DEL, e, NULL));
    send_byte(e, 'g');
    wait_ready(e, POLLIN);
    ewait("epoll_wait(0) word arrived", ep, 0);
    SHOW_DATA("read", buf, read(e, buf, sizeof buf));
    say("closing the last fd");
    CHECK(close(e) == 0);
    ewait("epoll_wait(0) nothing registered", ep, 0);
    CHECK(close(ep) == 0 && close(c) == 0 && close(p[1]) == 0);
}

static void server(const char *path, const char *mode) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    if (strcmp(mode, "select-big") == 0) select_big(c);
    else if (strcmp(mode, "epoll-fork") == 0) epoll_fork(lfd, c);
    else if (strcmp(mode, "epoll-dup") == 0) epoll_dup(c);
    else die("unknown mode %s", mode);
}

static void client(const char *path) {
    int fd = connect_to(path), second = -1;
    size_t next = 0;
    char cmd;
    while (next_command(fd, &cmd)) {
        if (cmd == 'c') {
            second = connect_to(path);
            say("second connection");
            send_byte(fd, 'k');
            continue;
        }
        CHECK(cmd == 'g' || (cmd == 'h' && second >= 0));
        CHECK(next < sizeof words / sizeof words[0]);
        write_str(cmd == 'g' ? fd : second, words[next]);
        say("sent %s%s", words[next++], cmd == 'h' ? " on the second connection" : "");
    }
    if (second >= 0) {
        char buf[16];
        SHOW_DATA("read second connection", buf, read(second, buf, sizeof buf));
    }
}

static const char *mode_arg;
static void server_main(const char *path) { server(path, mode_arg); }

int main(int argc, char **argv) {
    mode_arg = argc > 3 ? argv[3] : "";
    return run_role(argc, argv, server_main, client);
}
