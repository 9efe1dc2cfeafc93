/*
 * Helpers shared by the conformance programs (plain C, no tssx code).
 *
 * Every program is `PROG server PATH [ARGS...]` or `PROG client PATH [ARGS...]` and prints a
 * deterministic transcript of what it observed: return values, errno names, data, readiness
 * flags. The test driver runs each scenario on a plain Unix stream socket and again swapped
 * through tssx, and compares the transcripts. A transcript must not depend on timing or on
 * buffer sizes: the ends synchronize through the socket itself, never by sleeping.
 *
 * Output goes through write(2) on fd 1 (no stdio buffer), so a forked child never repeats the
 * parent's lines. A failed CHECK prints to stderr and exits 1.
 */
#ifndef CONFORM_H
#define CONFORM_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <stddef.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* Every helper is static and may go unused in one program. */
#define HELPER static __attribute__((unused))

HELPER void write_all_raw(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) _exit(3);
        p += w;
        n -= (size_t)w;
    }
}

/* One transcript line (a newline is added). */
__attribute__((format(printf, 1, 2))) HELPER void say(const char *fmt, ...) {
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    int saved = errno;
    write_all_raw(1, buf, (size_t)n);
    errno = saved;
}

/* Fails the program: a message on stderr, exit status 1. */
__attribute__((format(printf, 1, 2), noreturn)) HELPER void die(const char *fmt, ...) {
    char buf[4096];
    int e = errno;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    write_all_raw(2, buf, (size_t)n);
    (void)e;
    _exit(1);
}

HELPER const char *errname(int e) {
    switch (e) {
    case 0: return "0";
    case EAGAIN: return "EAGAIN";
    case EPIPE: return "EPIPE";
    case EINTR: return "EINTR";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case ENOTCONN: return "ENOTCONN";
    case ECONNRESET: return "ECONNRESET";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ENOTSOCK: return "ENOTSOCK";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EFAULT: return "EFAULT";
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EISCONN: return "EISCONN";
    case ENOBUFS: return "ENOBUFS";
    case EMSGSIZE: return "EMSGSIZE";
    case ESPIPE: return "ESPIPE";
    default: {
        static char other[32];
        snprintf(other, sizeof other, "E%d", e);
        return other;
    }
    }
}

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond))                                                                           \
            die("%s:%d: check failed: %s (errno %s)", __FILE__, __LINE__, #cond,               \
                errname(errno));                                                               \
    } while (0)

/* "-1 ENAME" for a failed call, the number otherwise. */
HELPER const char *rcstr(long rc, int err) {
    static char buf[64];
    if (rc < 0)
        snprintf(buf, sizeof buf, "%ld %s", rc, errname(err));
    else
        snprintf(buf, sizeof buf, "%ld", rc);
    return buf;
}

/* Runs `call`, prints "what -> rc" (with the errno name when it failed), yields rc. */
#define SHOW(what, call)                                                                       \
    ({                                                                                         \
        errno = 0;                                                                             \
        long r_ = (long)(call);                                                                \
        int e_ = errno;                                                                        \
        say("%s -> %s", (what), rcstr(r_, e_));                                                \
        errno = e_;                                                                            \
        r_;                                                                                    \
    })

/* `data` quoted with C escapes (at most 64 bytes shown, then "..."). */
HELPER const char *quoted(const void *data, long n) {
    static char buf[512];
    const unsigned char *p = data;
    size_t at = 0;
    buf[at++] = '"';
    for (long i = 0; i < n && i < 64; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\')
            buf[at++] = (char)p[i];
        else
            at += (size_t)snprintf(buf + at, sizeof buf - at, "\\x%02x", p[i]);
    }
    buf[at++] = '"';
    if (n > 64) at += (size_t)snprintf(buf + at, sizeof buf - at, "...");
    buf[at] = 0;
    return buf;
}

/* Runs a receiving `call` into `buf`, prints "what -> rc "data"" (or the errno), yields rc. */
#define SHOW_DATA(what, buf, call)                                                             \
    ({                                                                                         \
        errno = 0;                                                                             \
        long r_ = (long)(call);                                                                \
        int e_ = errno;                                                                        \
        if (r_ > 0)                                                                            \
            say("%s -> %ld %s", (what), r_, quoted((buf), r_));                                \
        else if (r_ == 0)                                                                      \
            say("%s -> 0 EOF", (what));                                                        \
        else                                                                                   \
            say("%s -> %s", (what), rcstr(r_, e_));                                            \
        errno = e_;                                                                            \
        r_;                                                                                    \
    })

/* epoll events as "EPOLLIN|EPOLLOUT" ("0" when none of the readiness bits is set). */
HELPER const char *epollstr(unsigned ev) {
    static char buf[128];
    buf[0] = 0;
    if (ev & EPOLLIN) strcat(buf, "|EPOLLIN");
    if (ev & EPOLLOUT) strcat(buf, "|EPOLLOUT");
    if (ev & EPOLLRDHUP) strcat(buf, "|EPOLLRDHUP");
    if (ev & EPOLLHUP) strcat(buf, "|EPOLLHUP");
    if (ev & EPOLLERR) strcat(buf, "|EPOLLERR");
    return buf[0] ? buf + 1 : "0";
}

/* poll(2) revents as "POLLIN|POLLOUT" ("0" when empty). */
HELPER const char *pollstr(int ev) {
    static char buf[256];
    static const struct { int bit; const char *name; } names[] = {
        {POLLIN, "POLLIN"},       {POLLPRI, "POLLPRI"},     {POLLOUT, "POLLOUT"},
        {POLLRDHUP, "POLLRDHUP"}, {POLLERR, "POLLERR"},     {POLLHUP, "POLLHUP"},
        {POLLNVAL, "POLLNVAL"},   {POLLRDNORM, "POLLRDNORM"}, {POLLWRNORM, "POLLWRNORM"},
        {POLLRDBAND, "POLLRDBAND"}, {POLLWRBAND, "POLLWRBAND"},
    };
    buf[0] = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (ev & names[i].bit) {
            if (buf[0]) strcat(buf, "|");
            strcat(buf, names[i].name);
            ev &= ~names[i].bit;
        }
    }
    if (ev) snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s0x%x", buf[0] ? "|" : "", ev);
    if (!buf[0]) strcpy(buf, "0");
    return buf;
}

/* poll on one fd; prints "what -> rc revents". */
HELPER int poll_one(const char *what, int fd, short events, int timeout) {
    struct pollfd p = {.fd = fd, .events = events};
    int rc;
    do rc = poll(&p, 1, timeout);
    while (rc < 0 && errno == EINTR);
    if (rc < 0) say("%s -> %s", what, rcstr(rc, errno));
    else say("%s -> %d %s", what, rc, pollstr(p.revents));
    return rc < 0 ? rc : p.revents;
}

/* Waits (poll, no timeout) until `events` are ready on fd, prints nothing; yields revents. */
HELPER int wait_ready(int fd, short events) {
    struct pollfd p = {.fd = fd, .events = events};
    for (;;) {
        int rc = poll(&p, 1, -1);
        if (rc < 0 && errno == EINTR) continue;
        CHECK(rc == 1);
        return p.revents;
    }
}

/* epoll_wait on `ep` with `timeout` (retried on EINTR); prints "what -> n EVENTS" with the
 * first event's flags, or the error. */
HELPER int epoll_say(const char *what, int ep, int timeout) {
    struct epoll_event ev[4];
    int n;
    do n = epoll_wait(ep, ev, 4, timeout);
    while (n < 0 && errno == EINTR);
    if (n < 0) say("%s -> %s", what, rcstr(n, errno));
    else if (n == 0) say("%s -> 0", what);
    else say("%s -> %d %s", what, n, epollstr(ev[0].events));
    return n;
}

HELPER struct sockaddr_un address(const char *path, socklen_t *len) {
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    CHECK(strlen(path) < sizeof a.sun_path);
    strcpy(a.sun_path, path);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
    return a;
}

/* Binds and listens on `path`, then prints "listening" (the driver starts the client then). */
HELPER int listen_on(const char *path) {
    socklen_t len;
    struct sockaddr_un a = address(path, &len);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    CHECK(bind(fd, (struct sockaddr *)&a, len) == 0);
    CHECK(listen(fd, 256) == 0);
    say("listening");
    return fd;
}

/*
 * Warm-up: with CONFORM_WARMUP=N in the environment, both ends of every new connection first
 * exchange one-byte round trips, a millisecond apart, until the connection has moved onto
 * tssx's rings, before the scenario uses it (nothing is printed, so the transcript is the
 * same). The test driver sets it for its run on a swapped connection; without it, the scenario
 * runs on a connection that is still migrating (tssx swaps a connection in flight, a few
 * milliseconds after it is opened, later on a loaded machine).
 *
 * "Moved" is seen from outside tssx: a `memfd:tssx-segment` mapping in /proc/self/maps whose
 * inode was not mapped when the connection was opened (connections warm up one at a time;
 * other connections' segments may come and go meanwhile). The client sends 'm'
 * once it has one ('w' before); the server answers 'g' once it has one too and has seen 'm'
 * for N rounds in a row (the rounds after the segment arrived carry each direction over), 'w'
 * otherwise. After 5000 rounds the server says 'g' regardless: the driver then reports the
 * connection that never swapped. Works on blocking and non-blocking sockets.
 */
HELPER void wait_for(int fd, short events) {
    struct pollfd p = {.fd = fd, .events = events};
    while (poll(&p, 1, -1) < 0) CHECK(errno == EINTR);
}

/* The tssx segments mapped in this process, by the inode of their memfd (unique per segment,
 * unlike an address, which a later mapping may reuse). */
struct segments {
    unsigned long inode[512];
    int n;
};

HELPER void segments_now(struct segments *seen) {
    const size_t size = 1 << 20;
    char *buf = malloc(size);
    CHECK(buf != NULL);
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, buf + have, size - 1 - have);
        if (n < 0 && errno == EINTR) continue;
        CHECK(n >= 0);
        if (n == 0 || have + (size_t)n == size - 1) {
            have += (size_t)n;
            break;
        }
        have += (size_t)n;
    }
    close(fd);
    buf[have] = 0;
    seen->n = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        unsigned long inode;
        if (!strstr(line, "memfd:tssx-segment") || sscanf(line, "%*s %*s %*s %*s %lu", &inode) != 1) continue;
        int known = 0;
        for (int i = 0; i < seen->n; i++) known |= seen->inode[i] == inode;
        if (!known && seen->n < (int)(sizeof seen->inode / sizeof seen->inode[0])) seen->inode[seen->n++] = inode;
    }
    free(buf);
}

/* Whether a segment is mapped now that was not in `before`. */
HELPER int new_segment(const struct segments *before) {
    struct segments now;
    segments_now(&now);
    for (int i = 0; i < now.n; i++) {
        int old = 0;
        for (int j = 0; j < before->n; j++) old |= now.inode[i] == before->inode[j];
        if (!old) return 1;
    }
    return 0;
}

/* One byte through a socket that may be non-blocking. */
HELPER void warm_byte(int fd, char *b, int reading) {
    for (;;) {
        wait_for(fd, reading ? POLLIN : POLLOUT);
        ssize_t n = reading ? read(fd, b, 1) : write(fd, b, 1);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        CHECK(n == 1);
        return;
    }
}

HELPER void warm_up(int fd, int server) {
    const char *env = getenv("CONFORM_WARMUP");
    int settle = env ? atoi(env) : 0;
    if (settle <= 0) return;
    struct segments before;
    segments_now(&before);
    int moved_in_a_row = 0;
    for (int round = 0;; round++) {
        char b;
        if (server) {
            warm_byte(fd, &b, 1);
            CHECK(b == 'w' || b == 'm');
            moved_in_a_row = b == 'm' && new_segment(&before) ? moved_in_a_row + 1 : 0;
            b = moved_in_a_row >= settle || round >= 5000 ? 'g' : 'w';
            warm_byte(fd, &b, 0);
            if (b == 'g') return;
        } else {
            b = new_segment(&before) ? 'm' : 'w';
            warm_byte(fd, &b, 0);
            warm_byte(fd, &b, 1);
            CHECK(b == 'g' || b == 'w');
            if (b == 'g') return;
            usleep(1000);
        }
    }
}

/* Accepts one connection (retrying on EINTR), warmed up (see `warm_up`). */
HELPER int accept_one(int lfd) {
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0 && errno == EINTR) continue;
        CHECK(fd >= 0);
        warm_up(fd, 1);
        return fd;
    }
}

/* Connects to PATH, without the warm-up (for servers that do not use `accept_one`). */
HELPER int connect_plain(const char *path) {
    socklen_t len;
    struct sockaddr_un a = address(path, &len);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    CHECK(connect(fd, (struct sockaddr *)&a, len) == 0);
    return fd;
}

/* Connects to PATH, warmed up (see `warm_up`). */
HELPER int connect_to(const char *path) {
    int fd = connect_plain(path);
    warm_up(fd, 0);
    return fd;
}

/* Writes all of buf (blocking socket), retrying on EINTR. */
HELPER void write_full(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        CHECK(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

/* Reads until n bytes or EOF (blocking socket); yields the count. */
HELPER size_t read_full(int fd, void *buf, size_t n) {
    char *p = buf;
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        CHECK(r >= 0);
        if (r == 0) break;
        got += (size_t)r;
    }
    return got;
}

/* Synchronization through the socket: one byte `c`. */
HELPER void send_byte(int fd, char c) { write_full(fd, &c, 1); }

HELPER void expect_byte(int fd, char c) {
    char got;
    size_t n = read_full(fd, &got, 1);
    if (n != 1) die("expected sync byte '%c', got EOF", c);
    if (got != c) die("expected sync byte '%c', got '%c'", c, got);
}

HELPER void write_str(int fd, const char *s) { write_full(fd, s, strlen(s)); }

/* A client's next one-byte command from its server (retrying on EINTR): 1 with the byte in
 * `cmd`, or 0 once the read ended (EOF or an error), said as "read -> ..." (the transcript's). */
HELPER int next_command(int fd, char *cmd) {
    for (;;) {
        ssize_t r = read(fd, cmd, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r == 1) return 1;
        say("read -> %s%s", rcstr(r, errno), r == 0 ? " EOF" : "");
        return 0;
    }
}

/* A client's side of the word protocol: for each 'g' its server sends, the next of the `n`
 * `words` (said as "sent WORD"), until the read ends (see next_command). */
HELPER void send_words_on_cue(int fd, const char *const *words, size_t n) {
    size_t next = 0;
    char cmd;
    while (next_command(fd, &cmd)) {
        CHECK(cmd == 'g');
        CHECK(next < n);
        write_str(fd, words[next]);
        say("sent %s", words[next++]);
    }
}

/* Reads exactly strlen(s) bytes and checks they are `s`. */
HELPER void expect_str(int fd, const char *s) {
    char buf[256];
    size_t n = strlen(s);
    CHECK(n < sizeof buf);
    size_t got = read_full(fd, buf, n);
    buf[got] = 0;
    if (got != n || memcmp(buf, s, n) != 0) die("expected \"%s\", got \"%s\"", s, buf);
}

/* Deterministic bytes: xorshift64* from a seed; the same stream whatever the chunk sizes. */
struct xs {
    uint64_t state;
    uint64_t word;
    int used;
};

HELPER struct xs xs_new(uint64_t seed) {
    struct xs x = {.state = seed * 0x9E3779B97F4A7C15ull + 1, .word = 0, .used = 8};
    return x;
}

HELPER uint64_t xs_next(struct xs *x) {
    x->state ^= x->state >> 12;
    x->state ^= x->state << 25;
    x->state ^= x->state >> 27;
    return x->state * 0x2545F4914F6CDD1Dull;
}

HELPER void xs_fill(struct xs *x, void *buf, size_t n) {
    unsigned char *p = buf;
    for (size_t i = 0; i < n; i++) {
        if (x->used == 8) {
            x->word = xs_next(x);
            x->used = 0;
        }
        p[i] = (unsigned char)(x->word >> (8 * x->used++));
    }
}

/* Checks that buf holds the next n bytes of the stream. */
HELPER int xs_check(struct xs *x, const void *buf, size_t n) {
    const unsigned char *p = buf;
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        if (x->used == 8) {
            x->word = xs_next(x);
            x->used = 0;
        }
        if (p[i] != (unsigned char)(x->word >> (8 * x->used++))) ok = 0;
    }
    return ok;
}

/* A number in [lo, hi] from the stream's generator (not from its bytes). */
HELPER size_t xs_range(struct xs *x, size_t lo, size_t hi) { return lo + (size_t)(xs_next(x) % (hi - lo + 1)); }

/* Position-addressed bytes: byte i of a stream is pat(i), so an unsent rest costs nothing. */
HELPER unsigned char pat(uint64_t i) {
    uint64_t h = (i + 1) * 0x9E3779B97F4A7C15ull;
    return (unsigned char)(h >> 56 ^ h >> 29);
}

HELPER void pat_fill(void *buf, uint64_t start, size_t n) {
    unsigned char *p = buf;
    for (size_t i = 0; i < n; i++) p[i] = pat(start + i);
}

HELPER int pat_check(const void *buf, uint64_t start, size_t n) {
    const unsigned char *p = buf;
    for (size_t i = 0; i < n; i++)
        if (p[i] != pat(start + i)) return 0;
    return 1;
}

HELPER void set_nonblock(int fd, int on) {
    int fl = fcntl(fd, F_GETFL);
    CHECK(fl >= 0);
    CHECK(fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK) == 0);
}

/* Installs `handler` for `sig` with the given sa_flags. */
HELPER void on_signal(int sig, void (*handler)(int), int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(sig, &sa, NULL) == 0);
}

/* "exited 0" / "killed by SIGPIPE" for a waitpid status. */
HELPER const char *statusstr(int st) {
    static char buf[64];
    if (WIFEXITED(st)) snprintf(buf, sizeof buf, "exited %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st)) snprintf(buf, sizeof buf, "killed by SIG%s", sigabbrev_np(WTERMSIG(st)) ? sigabbrev_np(WTERMSIG(st)) : "?");
    else snprintf(buf, sizeof buf, "status 0x%x", st);
    return buf;
}

/* This program's own path (for a child that runs it again), read once. */
HELPER const char *self_path(void) {
    static char self[4096];
    if (!self[0]) {
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        CHECK(n > 0);
        self[n] = 0;
    }
    return self;
}

HELPER int wait_child(pid_t pid) {
    int st;
    pid_t r;
    do r = waitpid(pid, &st, 0);
    while (r < 0 && errno == EINTR);
    CHECK(r == pid);
    return st;
}

/* Common argument parsing: sets *path and returns 1 for "server", 0 for "client". */
HELPER int parse_role(int argc, char **argv, const char **path) {
    if (argc < 3 || (strcmp(argv[1], "server") != 0 && strcmp(argv[1], "client") != 0))
        die("usage: %s server|client PATH [ARGS...]", argv[0]);
    *path = argv[2];
    return strcmp(argv[1], "server") == 0;
}

/* main() of a scenario whose ends take no arguments after PATH: runs `server(PATH)` or
 * `client(PATH)` as argv says (see parse_role); returns main's exit status. */
HELPER int run_role(int argc, char **argv, void (*server)(const char *), void (*client)(const char *)) {
    const char *path;
    if (parse_role(argc, argv, &path)) server(path);
    else client(path);
    return 0;
}

#endif
