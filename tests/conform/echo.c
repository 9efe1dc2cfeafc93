/*
 * Echo servers on every readiness API, and one client for all of them.
 *
 *   echo server PATH MODE NCONN   MODE: epoll-lt epoll-et epoll-pwait poll ppoll select pselect
 *   echo client PATH NCONN ROUNDS
 *
 * The client opens NCONN connections at once, then for ROUNDS rounds writes a random-sized
 * chunk (1..3000 bytes, its own xorshift stream per connection) on every connection before
 * reading every echo back and checking it byte for byte. The server is single-threaded and
 * non-blocking: it echoes whatever it reads, keeps what the socket does not take, and waits on
 * the API under test. It exits once it has accepted NCONN connections and seen EOF on all.
 *
 * Accepted sockets are made non-blocking in two ways: accept4(SOCK_NONBLOCK) for epoll-et,
 * epoll-pwait, select and pselect, accept() then fcntl(F_SETFL, O_NONBLOCK) for the others.
 *
 * With CONFORM_WARMUP (see conform.h) each connection is warmed up when it is opened, one at a
 * time: the client's connect_to, the server's warm_up right after the accept (the epoll servers
 * after they registered the socket, so that its registration is the one that moves with it).
 * The warm-up's bytes are the warm-up's own: never echoed, never counted.
 */
#include "conform.h"

#include <sys/epoll.h>
#include <sys/select.h>

#define MAXFD 1024
#define PEND 65536

struct conn {
    int open;
    char buf[PEND];
    size_t len; /* bytes read, not yet echoed */
};

static struct conn conns[MAXFD];
static const char *mode;
static int accepted, closed_conns;
static unsigned long long echoed;

static int uses_accept4(void) {
    return !strcmp(mode, "epoll-et") || !strcmp(mode, "epoll-pwait") || !strcmp(mode, "select") ||
           !strcmp(mode, "pselect");
}

/* Accepts one pending connection; -1 when there is none (EAGAIN). */
static int do_accept(int lfd) {
    int fd;
    if (uses_accept4()) {
        fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
    } else {
        fd = accept(lfd, NULL, NULL);
        if (fd >= 0) set_nonblock(fd, 1);
    }
    if (fd < 0) {
        CHECK(errno == EAGAIN || errno == EINTR);
        return -1;
    }
    CHECK(fd < MAXFD);
    conns[fd].open = 1;
    conns[fd].len = 0;
    accepted++;
    return fd;
}

/* do_accept, then the warm-up of the accepted socket (see conform.h). */
static void accept_warm(int lfd) {
    int fd = do_accept(lfd);
    if (fd >= 0) warm_up(fd, 1);
}

/* Writes pending bytes until done or EAGAIN. */
static void flush_out(int fd) {
    struct conn *c = &conns[fd];
    size_t off = 0;
    while (off < c->len) {
        ssize_t w = write(fd, c->buf + off, c->len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
            CHECK(errno == EAGAIN);
            break;
        }
        CHECK(w > 0);
        off += (size_t)w;
        echoed += (unsigned long long)w;
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
}

/* Reads until EAGAIN, the buffer is full, or EOF (then closes); 1 if the fd was closed. */
static int pump(int fd) {
    struct conn *c = &conns[fd];
    for (;;) {
        flush_out(fd);
        if (c->len == PEND) return 0; /* back-pressure: wait for POLLOUT */
        ssize_t r = read(fd, c->buf + c->len, PEND - c->len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            CHECK(errno == EAGAIN);
            return 0;
        }
        if (r == 0) {
            CHECK(c->len == 0); /* the client reads every echo before it closes */
            c->open = 0;
            closed_conns++;
            CHECK(close(fd) == 0);
            return 1;
        }
        c->len += (size_t)r;
    }
}

static int done(int nconn) { return accepted == nconn && closed_conns == nconn; }

static void run_epoll(int lfd, int nconn, int edge, int pwait) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0);
    if (edge) set_nonblock(lfd, 1);
    struct epoll_event ev = {.events = EPOLLIN | (edge ? EPOLLET : 0), .data.fd = lfd};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) == 0);
    sigset_t mask;
    sigemptyset(&mask);
    while (!done(nconn)) {
        struct epoll_event evs[64];
        int n = pwait ? epoll_pwait(ep, evs, 64, -1, &mask) : epoll_wait(ep, evs, 64, -1);
        if (n < 0 && errno == EINTR) continue;
        CHECK(n > 0);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int cfd;
                while ((cfd = do_accept(lfd)) >= 0) {
                    struct epoll_event cev = {.data.fd = cfd};
                    cev.events = edge ? EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET : EPOLLIN;
                    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev) == 0);
                    warm_up(cfd, 1);
                    if (!edge) break; /* level-triggered: one per event is enough */
                }
                continue;
            }
            if (!conns[fd].open) continue;
            if (pump(fd)) continue;
            if (!edge) {
                /* Level-triggered: wait for POLLOUT only while output is pending. */
                struct epoll_event cev = {.data.fd = fd};
                cev.events = conns[fd].len ? EPOLLOUT : EPOLLIN;
                CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, fd, &cev) == 0);
            }
        }
    }
    CHECK(close(ep) == 0);
}

static void run_poll(int lfd, int nconn, int ppoll_mode) {
    static struct pollfd fds[MAXFD];
    sigset_t mask;
    sigemptyset(&mask);
    while (!done(nconn)) {
        int n = 0;
        if (accepted < nconn) fds[n++] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (int fd = 0; fd < MAXFD; fd++)
            if (conns[fd].open) fds[n++] = (struct pollfd){.fd = fd, .events = conns[fd].len ? POLLOUT : POLLIN};
        int rc = ppoll_mode ? ppoll(fds, (nfds_t)n, NULL, &mask) : poll(fds, (nfds_t)n, -1);
        if (rc < 0 && errno == EINTR) continue;
        CHECK(rc > 0);
        for (int i = 0; i < n; i++) {
            if (!fds[i].revents) continue;
            CHECK(!(fds[i].revents & POLLNVAL));
            if (fds[i].fd == lfd) accept_warm(lfd);
            else pump(fds[i].fd);
        }
    }
}

static void run_select(int lfd, int nconn, int pselect_mode) {
    sigset_t mask;
    sigemptyset(&mask);
    while (!done(nconn)) {
        fd_set rd, wr;
        FD_ZERO(&rd);
        FD_ZERO(&wr);
        int maxfd = -1;
        if (accepted < nconn) {
            FD_SET(lfd, &rd);
            maxfd = lfd;
        }
        for (int fd = 0; fd < MAXFD; fd++) {
            if (!conns[fd].open) continue;
            FD_SET(fd, conns[fd].len ? &wr : &rd);
            if (fd > maxfd) maxfd = fd;
        }
        int rc = pselect_mode ? pselect(maxfd + 1, &rd, &wr, NULL, NULL, &mask)
                              : select(maxfd + 1, &rd, &wr, NULL, NULL);
        if (rc < 0 && errno == EINTR) continue;
        CHECK(rc > 0);
        if (accepted < nconn && FD_ISSET(lfd, &rd)) accept_warm(lfd);
        for (int fd = 0; fd <= maxfd; fd++)
            if (fd != lfd && conns[fd].open && (FD_ISSET(fd, &rd) || FD_ISSET(fd, &wr))) pump(fd);
    }
}

static void server(const char *path, int nconn) {
    int lfd = listen_on(path);
    CHECK(lfd < MAXFD);
    if (!strcmp(mode, "epoll-lt")) run_epoll(lfd, nconn, 0, 0);
    else if (!strcmp(mode, "epoll-et")) run_epoll(lfd, nconn, 1, 0);
    else if (!strcmp(mode, "epoll-pwait")) run_epoll(lfd, nconn, 0, 1);
    else if (!strcmp(mode, "poll")) run_poll(lfd, nconn, 0);
    else if (!strcmp(mode, "ppoll")) run_poll(lfd, nconn, 1);
    else if (!strcmp(mode, "select")) run_select(lfd, nconn, 0);
    else if (!strcmp(mode, "pselect")) run_select(lfd, nconn, 1);
    else die("unknown mode %s", mode);
    say("accepted %d connections", accepted);
    say("echoed %llu bytes", echoed);
    say("EOF on %d connections", closed_conns);
}

static void client(const char *path, int nconn, int rounds) {
    int *fds = calloc((size_t)nconn, sizeof *fds);
    struct xs *out = calloc((size_t)nconn, sizeof *out), *in = calloc((size_t)nconn, sizeof *in);
    size_t *sizes = calloc((size_t)nconn, sizeof *sizes);
    CHECK(fds && out && in && sizes);
    for (int i = 0; i < nconn; i++) {
        fds[i] = connect_to(path);
        out[i] = xs_new((uint64_t)i + 1);
        in[i] = xs_new((uint64_t)i + 1);
    }
    say("connected %d", nconn);
    unsigned long long total = 0;
    int bad = 0;
    char buf[3000];
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < nconn; i++) {
            sizes[i] = xs_range(&out[i], 1, sizeof buf);
            xs_fill(&out[i], buf, sizes[i]);
            write_full(fds[i], buf, sizes[i]);
        }
        for (int i = 0; i < nconn; i++) {
            size_t got = read_full(fds[i], buf, sizes[i]);
            if (got != sizes[i]) die("connection %d round %d: EOF after %zu of %zu", i, r, got, sizes[i]);
            xs_range(&in[i], 1, sizeof buf); /* keep the generators in step */
            if (!xs_check(&in[i], buf, got)) bad++;
            total += got;
        }
    }
    for (int i = 0; i < nconn; i++) CHECK(close(fds[i]) == 0);
    say("rounds %d, echoed %llu bytes, corrupt chunks %d", rounds, total, bad);
}

int main(int argc, char **argv) {
    const char *path;
    signal(SIGPIPE, SIG_IGN);
    if (parse_role(argc, argv, &path)) {
        if (argc != 5) die("usage: echo server PATH MODE NCONN");
        mode = argv[3];
        server(path, atoi(argv[4]));
    } else {
        if (argc != 5) die("usage: echo client PATH NCONN ROUNDS");
        client(path, atoi(argv[3]), atoi(argv[4]));
    }
    return 0;
}
