/*
 * Random interleaving: both ends non-blocking, driven by poll, each sending BYTES in random
 * sizes through write/send/writev/sendmsg while receiving in random sizes through
 * read/recv/readv/recvmsg, sometimes peeking first; every byte is checked.
 *
 *   stress server PATH BYTES SEED / stress client PATH BYTES SEED
 *
 * The client closes when it has sent and received everything; the server then reads EOF.
 * Readiness must be truthful: a read after POLLIN and a write after POLLOUT must not fail
 * with EAGAIN (a single reader and a single writer), and the count of such surprises is
 * printed.
 */
#include "conform.h"

#include <sys/uio.h>

#define MAXCHUNK 65536

/* A size from 1 to MAXCHUNK, log-uniform so that tiny and large transfers both occur. */
static size_t rsize(struct xs *x) {
    unsigned bits = (unsigned)(xs_next(x) % 17);
    return 1 + (size_t)(xs_next(x) % (1ull << bits));
}

static ssize_t do_send(int fd, struct xs *x, const char *buf, size_t n) {
    switch (xs_next(x) % 4) {
    case 0: return write(fd, buf, n);
    case 1: return send(fd, buf, n, MSG_NOSIGNAL);
    case 2: {
        size_t h = n / 2;
        struct iovec iov[2] = {{(void *)buf, h}, {(void *)(buf + h), n - h}};
        return writev(fd, iov, 2);
    }
    default: {
        struct iovec iov = {(void *)buf, n};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
        return sendmsg(fd, &m, MSG_DONTWAIT);
    }
    }
}

static ssize_t do_recv(int fd, struct xs *x, char *buf, size_t n, int *peek_bad, uint64_t pos) {
    static char pbuf[MAXCHUNK];
    if (xs_next(x) % 5 == 0) {
        ssize_t p = recv(fd, pbuf, n, MSG_PEEK);
        if (p > 0 && !pat_check(pbuf, pos, (size_t)p)) (*peek_bad)++;
    }
    switch (xs_next(x) % 4) {
    case 0: return read(fd, buf, n);
    case 1: return recv(fd, buf, n, MSG_DONTWAIT);
    case 2: {
        size_t h = n / 3;
        struct iovec iov[2] = {{buf, h}, {buf + h, n - h}};
        return readv(fd, iov, 2);
    }
    default: {
        struct iovec iov = {buf, n};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
        return recvmsg(fd, &m, 0);
    }
    }
}

static void run(int fd, uint64_t total, uint64_t seed, uint64_t my_base, uint64_t peer_base, int wait_eof) {
    set_nonblock(fd, 1);
    struct xs x = xs_new(seed);
    static char out[MAXCHUNK], in[MAXCHUNK];
    uint64_t sent = 0, got = 0;
    size_t pending = 0, off = 0;
    int bad = 0, peek_bad = 0, eagain_in = 0, eagain_out = 0, eof = 0;
    while (sent < total || pending || got < total || (wait_eof && !eof)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (pending || sent < total) p.events |= POLLOUT;
        int rc = poll(&p, 1, -1);
        if (rc < 0 && errno == EINTR) continue;
        CHECK(rc == 1);
        CHECK(!(p.revents & (POLLERR | POLLNVAL)));
        if (p.revents & POLLOUT) {
            if (!pending) {
                size_t n = rsize(&x);
                if (n > total - sent) n = (size_t)(total - sent);
                pat_fill(out, my_base + sent, n);
                pending = n;
                off = 0;
                sent += n;
            }
            ssize_t w = do_send(fd, &x, out + off, pending);
            if (w < 0) {
                CHECK(errno == EAGAIN || errno == EINTR);
                eagain_out++;
            } else {
                off += (size_t)w;
                pending -= (size_t)w;
            }
        }
        if (p.revents & (POLLIN | POLLHUP)) {
            size_t n = rsize(&x);
            ssize_t r = do_recv(fd, &x, in, n, &peek_bad, peer_base + got);
            if (r < 0) {
                CHECK(errno == EAGAIN || errno == EINTR);
                eagain_in++;
            } else if (r == 0) {
                CHECK(got == total);
                eof = 1;
                if (!wait_eof) break;
            } else {
                if (!pat_check(in, peer_base + got, (size_t)r)) bad++;
                got += (uint64_t)r;
                CHECK(got <= total);
            }
        }
    }
    say("sent %llu, received %llu, corrupt reads %d, corrupt peeks %d", (unsigned long long)sent,
        (unsigned long long)got, bad, peek_bad);
    say("EAGAIN after POLLIN: %d, after POLLOUT: %d", eagain_in, eagain_out);
    if (wait_eof) say("then EOF: %s", eof ? "yes" : "no");
}

int main(int argc, char **argv) {
    const char *path;
    signal(SIGPIPE, SIG_IGN);
    int server = parse_role(argc, argv, &path);
    if (argc != 5) die("usage: stress server|client PATH BYTES SEED");
    uint64_t total = strtoull(argv[3], NULL, 10), seed = strtoull(argv[4], NULL, 10);
    const uint64_t S = 0, C = 1ull << 40; /* each direction's pattern offset */
    if (server) {
        int lfd = listen_on(path);
        int c = accept_one(lfd);
        run(c, total, seed * 2, S, C, 1);
    } else {
        /* Non-blocking from socket() on: connect must still succeed at once. */
        socklen_t len;
        struct sockaddr_un a = address(path, &len);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        CHECK(fd >= 0);
        SHOW("connect SOCK_NONBLOCK", connect(fd, (struct sockaddr *)&a, len));
        warm_up(fd, 0);
        run(fd, total, seed * 2 + 1, C, S, 0);
        SHOW("close", close(fd));
    }
    return 0;
}
