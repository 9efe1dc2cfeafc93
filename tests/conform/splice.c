/*
 * splice(2) between a pipe and the socket, both ways, with the peer's bytes already in flight
 * on the socket (sent before the splice, in both directions), a bulk transfer through pipes
 * both ways, the non-blocking and EOF cases, and the kernel's errors (offsets, the wrong pipe
 * end, no pipe on either side). tee(2) and vmsplice(2) take pipes only: the kernel refuses the
 * socket.
 *
 *   splice server PATH / splice client PATH
 *
 * Every message is written in one call and the reader waits for it (a blocking splice of its
 * exact length, or a sync byte) before it looks, so counts are fixed.
 */
#include "conform.h"

#include <sys/ioctl.h>
#include <sys/uio.h>

#define BULK (1 << 20)
#define CHUNK 4096

/* What the pipe holds, read out. */
static void show_pipe(const char *what, int pr) {
    int n = 0;
    CHECK(ioctl(pr, FIONREAD, &n) == 0);
    char buf[256];
    CHECK(n < (int)sizeof buf);
    ssize_t got = n > 0 ? read(pr, buf, (size_t)n) : 0;
    say("%s: pipe holds %s", what, quoted(buf, got));
}

/* Sends BULK bytes of stream `seed` through a pipe and splice into the socket. */
static void bulk_send(int fd, uint64_t seed) {
    int p[2];
    CHECK(pipe(p) == 0);
    struct xs x = xs_new(seed);
    char buf[CHUNK];
    uint64_t moved = 0;
    while (moved < BULK) {
        xs_fill(&x, buf, CHUNK);
        write_full(p[1], buf, CHUNK);
        size_t left = CHUNK;
        while (left > 0) {
            ssize_t n = splice(p[0], NULL, fd, NULL, left, SPLICE_F_MORE);
            if (n < 0 && errno == EINTR) continue;
            CHECK(n > 0);
            left -= (size_t)n;
        }
        moved += CHUNK;
    }
    close(p[0]);
    close(p[1]);
}

/* Receives BULK bytes of stream `seed` with splice out of the socket into a pipe. */
static void bulk_receive(int fd, uint64_t seed, const char *who) {
    int p[2];
    CHECK(pipe(p) == 0);
    struct xs x = xs_new(seed);
    char buf[65536];
    uint64_t got = 0;
    int ok = 1;
    while (got < BULK) {
        ssize_t n = splice(fd, NULL, p[1], NULL, BULK - got, 0);
        if (n < 0 && errno == EINTR) continue;
        CHECK(n > 0);
        size_t r = read_full(p[0], buf, (size_t)n);
        CHECK(r == (size_t)n);
        ok &= xs_check(&x, buf, r);
        got += r;
    }
    say("%s: bulk through splice: %llu bytes, in order: %s", who, (unsigned long long)got, ok ? "yes" : "no");
    close(p[0]);
    close(p[1]);
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int fd = accept_one(lfd);
    int p[2];
    CHECK(pipe(p) == 0);
    char buf[64];

    /* In flight both ways: each end sent before any splice. */
    SHOW("send s2c-early", send(fd, "s2c-early", 9, 0));
    SHOW("splice socket -> pipe 9 (the client's early bytes)", splice(fd, NULL, p[1], NULL, 9, 0));
    show_pipe("server", p[0]);
    write_full(p[1], "s2c-piped", 9);
    SHOW("splice pipe -> socket 100", splice(p[0], NULL, fd, NULL, 100, 0));
    size_t got = read_full(fd, buf, 9);
    say("server: read 9 -> %s", quoted(buf, (long)got));

    /* Partial lengths: the rest stays where it was. */
    send_byte(fd, 'g');
    SHOW("splice socket -> pipe 4 (of 10)", splice(fd, NULL, p[1], NULL, 4, 0));
    show_pipe("server", p[0]);
    SHOW_DATA("read the rest", buf, read(fd, buf, sizeof buf));

    /* Non-blocking and errors: nothing moves. */
    SHOW("splice empty socket -> pipe SPLICE_F_NONBLOCK", splice(fd, NULL, p[1], NULL, 10, SPLICE_F_NONBLOCK));
    SHOW("splice empty pipe -> socket SPLICE_F_NONBLOCK", splice(p[0], NULL, fd, NULL, 10, SPLICE_F_NONBLOCK));
    loff_t off = 0;
    SHOW("splice socket -> pipe, offset on the socket", splice(fd, &off, p[1], NULL, 10, 0));
    SHOW("splice socket -> pipe, offset on the pipe", splice(fd, NULL, p[1], &off, 10, 0));
    SHOW("splice socket -> the pipe's read end", splice(fd, NULL, p[0], NULL, 10, 0));
    SHOW("splice socket -> pipe, unknown flags", splice(fd, NULL, p[1], NULL, 10, 0x100));
    SHOW("splice socket -> pipe, len 0", splice(fd, NULL, p[1], NULL, 0, 0));
    SHOW("splice socket -> socket", splice(fd, NULL, fd, NULL, 10, 0));
    SHOW("tee socket -> pipe", tee(fd, p[1], 10, 0));
    SHOW("tee pipe -> socket", tee(p[0], fd, 10, 0));
    struct iovec v = {.iov_base = "v", .iov_len = 1};
    SHOW("vmsplice socket", vmsplice(fd, &v, 1, 0));
    send_byte(fd, 'h');
    SHOW_DATA("read the client's check bytes", buf, recv(fd, buf, 5, MSG_WAITALL));

    /* Bulk both ways. */
    send_byte(fd, 'b');
    bulk_receive(fd, 11, "server");
    bulk_send(fd, 12);

    /* EOF: the client shut its side. */
    SHOW("splice socket at EOF -> pipe", splice(fd, NULL, p[1], NULL, 10, 0));
    close(p[1]);
    SHOW("splice empty pipe without writer -> socket", splice(p[0], NULL, fd, NULL, 10, 0));
    close(p[0]);
    SHOW("close", close(fd));
}

static void client(const char *path) {
    int fd = connect_to(path);
    int p[2];
    CHECK(pipe(p) == 0);
    char buf[64];

    SHOW("send c2s-early", send(fd, "c2s-early", 9, 0));
    SHOW("splice socket -> pipe 9 (the server's early bytes)", splice(fd, NULL, p[1], NULL, 9, 0));
    show_pipe("client", p[0]);
    write_full(p[1], "c2s-piped", 9);
    SHOW("splice pipe -> socket 100", splice(p[0], NULL, fd, NULL, 100, 0));
    size_t got = read_full(fd, buf, 9);
    say("client: read 9 -> %s", quoted(buf, (long)got));

    expect_byte(fd, 'g');
    SHOW("send 0123456789", send(fd, "0123456789", 10, 0));
    expect_byte(fd, 'h');
    /* Pipe -> socket with a short len: the rest stays in the pipe. */
    write_full(p[1], "checkmore", 9);
    SHOW("splice pipe -> socket 5 (of 9)", splice(p[0], NULL, fd, NULL, 5, 0));
    show_pipe("client", p[0]);

    expect_byte(fd, 'b');
    bulk_send(fd, 11);
    bulk_receive(fd, 12, "client");

    SHOW("shutdown SHUT_WR", shutdown(fd, SHUT_WR));
    SHOW("read at EOF", read(fd, buf, 1));
    close(p[0]);
    close(p[1]);
    SHOW("close", close(fd));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
