/*
 * io_uring on a connected stream socket: the server sets up an io_uring (raw system calls, as
 * liburing makes them; no preload sees them) before it accepts, then receives and sends with
 * IORING_OP_RECV / IORING_OP_SEND, after poll() says the socket is readable (as programs that
 * mix a readiness loop with io_uring do); the client uses read/write. tssx keeps a connection of a
 * process that uses io_uring plain (its io_uring calls would bypass the rings), so the
 * transcript is the plain one and the agent says why.
 *
 *   iouring server PATH / iouring client PATH
 *
 * The client sends a fixed-size message per round, 2 ms apart (time enough for a connection
 * to move onto the rings), and waits for each reply.
 *
 *   iouring server PATH late / iouring client PATH late
 *
 * The io_uring comes late: the server accepts (warmed up: the connection is on the rings in
 * the swapped run), exchanges rounds with read/write, then, with bytes in flight both ways
 * (the client's next "ping" unread by the server, an extra message of the server's unread by
 * the client), sets up an io_uring and goes on with IORING_OP_RECV / IORING_OP_SEND on the same
 * connection: tssx hands the connection back to the kernel before the io_uring can be used, and
 * every byte arrives in order both ways. A second connection, made after that, stays plain.
 */
#include "conform.h"

#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#define ROUNDS 20
#define MSG 7 /* "ping NN" / "pong NN" */

struct ring {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
};

static void ring_init(struct ring *r) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    r->fd = (int)syscall(__NR_io_uring_setup, 8, &p);
    CHECK(r->fd >= 0);
    size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single && cq_size > sq_size) sq_size = cq_size;
    char *sq = mmap(NULL, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    CHECK(sq != MAP_FAILED);
    char *cq = single ? sq : mmap(NULL, cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
    CHECK(cq != MAP_FAILED);
    r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                   IORING_OFF_SQES);
    CHECK(r->sqes != MAP_FAILED);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
}

/* One operation, submitted and waited for; its result (bytes, or -errno). */
static int ring_do(struct ring *r, int op, int fd, void *buf, unsigned len) {
    unsigned tail = *r->sq_tail;
    unsigned idx = tail & *r->sq_mask;
    struct io_uring_sqe *e = &r->sqes[idx];
    memset(e, 0, sizeof *e);
    e->opcode = (unsigned char)op;
    e->fd = fd;
    e->addr = (unsigned long)buf;
    e->len = len;
    r->sq_array[idx] = idx;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    for (;;) {
        long rc = syscall(__NR_io_uring_enter, r->fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0);
        if (rc < 0 && errno == EINTR) continue;
        CHECK(rc >= 0);
        break;
    }
    unsigned head = __atomic_load_n(r->cq_head, __ATOMIC_ACQUIRE);
    while (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE))
        CHECK(syscall(__NR_io_uring_enter, r->fd, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0) >= 0 || errno == EINTR);
    int res = r->cqes[head & *r->cq_mask].res;
    __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
    return res;
}

static void server(const char *path) {
    int lfd = listen_on(path);
    struct ring r;
    ring_init(&r);
    int c = accept(lfd, NULL, NULL);
    CHECK(c >= 0);
    char buf[64];
    for (;;) {
        size_t got = 0;
        int res = 0;
        wait_ready(c, POLLIN);
        while (got < MSG && (res = ring_do(&r, IORING_OP_RECV, c, buf + got, MSG - got)) > 0) got += (size_t)res;
        if (got == 0) {
            say("io_uring recv -> %s", res == 0 ? "0 EOF" : errname(-res));
            break;
        }
        say("io_uring recv -> %s", quoted(buf, (long)got));
        buf[0] = 'p', buf[1] = 'o', buf[2] = 'n', buf[3] = 'g';
        say("io_uring send -> %d", ring_do(&r, IORING_OP_SEND, c, buf, MSG));
    }
    close(c);
}

static void client(const char *path) {
    int fd = connect_plain(path);
    char msg[MSG + 1], buf[MSG];
    for (int i = 0; i < ROUNDS; i++) {
        if (i) usleep(2000);
        snprintf(msg, sizeof msg, "ping %02d", i);
        write_full(fd, msg, MSG);
        size_t got = read_full(fd, buf, MSG);
        say("reply -> %s", quoted(buf, (long)got));
    }
    SHOW("close", close(fd));
}

#define EARLY 5 /* rounds on read/write before the io_uring */

/* One round on the ring: receive a ping (after poll, as in `server`), answer pong. */
static void ring_round(struct ring *r, int c) {
    char buf[64];
    size_t got = 0;
    int res = 0;
    wait_ready(c, POLLIN);
    while (got < MSG && (res = ring_do(r, IORING_OP_RECV, c, buf + got, MSG - got)) > 0) got += (size_t)res;
    if (got < MSG) {
        say("io_uring recv -> %s after %zu", res == 0 ? "0 EOF" : errname(-res), got);
        exit(1);
    }
    say("io_uring recv -> %s", quoted(buf, (long)got));
    buf[0] = 'p', buf[1] = 'o', buf[2] = 'n', buf[3] = 'g';
    say("io_uring send -> %d", ring_do(r, IORING_OP_SEND, c, buf, MSG));
}

static void late_server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    char buf[64];
    for (int i = 0; i < EARLY; i++) {
        size_t got = read_full(c, buf, MSG);
        say("read -> %s", quoted(buf, (long)got));
        buf[0] = 'p', buf[1] = 'o', buf[2] = 'n', buf[3] = 'g';
        write_full(c, buf, MSG);
    }
    /* Unread by the client until after the io_uring is set up. */
    write_full(c, "early!!", MSG);
    /* The client's next ping arrives meanwhile, unread. */
    usleep(30000);
    struct ring r;
    ring_init(&r);
    say("io_uring set up");
    for (int i = EARLY; i < ROUNDS; i++) ring_round(&r, c);
    /* A second connection, after the io_uring: plain (the io_uring uses it too). */
    int c2;
    while ((c2 = accept(lfd, NULL, NULL)) < 0 && errno == EINTR) {
    }
    CHECK(c2 >= 0);
    for (int i = 0; i < 3; i++) ring_round(&r, c2);
    size_t got = read_full(c, buf, 1);
    say("first connection after the second -> %zu", got);
    close(c2);
    close(c);
}

static void late_client(const char *path) {
    int fd = connect_to(path);
    char msg[MSG + 1], buf[MSG];
    for (int i = 0; i < ROUNDS; i++) {
        snprintf(msg, sizeof msg, "ping %02d", i);
        write_full(fd, msg, MSG);
        if (i == EARLY) {
            /* The server sets up its io_uring now (it waits 30 ms): call nothing on the
             * connection meanwhile, then read the message it sent before. */
            usleep(60000);
            size_t got = read_full(fd, buf, MSG);
            say("early -> %s", quoted(buf, (long)got));
        }
        size_t got = read_full(fd, buf, MSG);
        say("reply -> %s", quoted(buf, (long)got));
    }
    int fd2 = connect_plain(path);
    for (int i = 0; i < 3; i++) {
        snprintf(msg, sizeof msg, "ping %02d", 50 + i);
        write_full(fd2, msg, MSG);
        size_t got = read_full(fd2, buf, MSG);
        say("second reply -> %s", quoted(buf, (long)got));
    }
    SHOW("close second", close(fd2));
    usleep(2000);
    write_full(fd, "z", 1);
    SHOW("close", close(fd));
}

int main(int argc, char **argv) {
    const char *path;
    int is_server = parse_role(argc, argv, &path);
    int late = argc == 4 && !strcmp(argv[3], "late");
    if (argc == 4 && !late) die("unknown part %s", argv[3]);
    if (is_server) late ? late_server(path) : server(path);
    else late ? late_client(path) : client(path);
    return 0;
}
