/*
 * preadv2/pwritev2 on a connected stream socket: offset -1 makes them readv/writev with RWF_*
 * flags (RWF_NOWAIT is MSG_DONTWAIT, RWF_NOSIGNAL is MSG_NOSIGNAL, others change nothing or
 * are refused with EOPNOTSUPP); any other offset is refused (ESPIPE, EINVAL) without touching
 * the data. Both spellings (preadv2 and preadv64v2) are called.
 *
 *   rwf server PATH / rwf client PATH
 *
 * Every message is written in one call and the reader waits for it (poll) before reading, so
 * counts are fixed.
 */
#include "conform.h"

#include <sys/uio.h>

#ifndef RWF_NOAPPEND
#define RWF_NOAPPEND 0x00000020
#endif
#define RWF_ATOMIC_ 0x00000040
#define RWF_DONTCACHE_ 0x00000080
#define RWF_NOSIGNAL_ 0x00000100
#define RWF_FUTURE_ 0x00100000

ssize_t preadv64v2(int fd, const struct iovec *iov, int cnt, off64_t offset, int flags);
ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off64_t offset, int flags);

static const struct { int flags; const char *name; } FLAGS[] = {
    {0, "0"},
    {RWF_HIPRI, "RWF_HIPRI"},
    {RWF_DSYNC, "RWF_DSYNC"},
    {RWF_SYNC, "RWF_SYNC"},
    {RWF_NOWAIT, "RWF_NOWAIT"},
    {RWF_APPEND, "RWF_APPEND"},
    {RWF_NOAPPEND, "RWF_NOAPPEND"},
    {RWF_ATOMIC_, "RWF_ATOMIC"},
    {RWF_DONTCACHE_, "RWF_DONTCACHE"},
    {RWF_NOSIGNAL_, "RWF_NOSIGNAL"},
};
#define NFLAGS (int)(sizeof FLAGS / sizeof FLAGS[0])

/* Every message is MSG bytes: a read of MSG bytes takes exactly one. */
#define MSG 24

static void read_one(int c, const char *what, int flags, int wide) {
    char all[MSG + 1];
    char *a = all, *b = all + 3;
    struct iovec iov[2] = {{a, 3}, {b, MSG - 3}};
    char label[96];
    snprintf(label, sizeof label, "%s %s", wide ? "preadv64v2" : "preadv2", what);
    errno = 0;
    long r = wide ? preadv64v2(c, iov, 2, -1, flags) : preadv2(c, iov, 2, -1, flags);
    int e = errno;
    if (r > 0) say("%s -> %ld %s", label, r, quoted(all, r));
    else if (r == 0) say("%s -> 0 EOF", label);
    else {
        say("%s -> %s", label, rcstr(r, e));
        size_t n = read_full(c, all, MSG); /* the message stays queued: taken plainly */
        say("  then read -> %s", quoted(all, (long)n));
    }
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    for (int i = 0; i < NFLAGS; i++) {
        send_byte(c, 'g');
        if (wait_ready(c, POLLIN) & POLLIN) read_one(c, FLAGS[i].name, FLAGS[i].flags, i % 2);
    }
    char buf[16];
    struct iovec v = {buf, sizeof buf};
    say("-- offsets and unknown flags (nothing queued)");
    SHOW("preadv2 offset 0", preadv2(c, &v, 1, 0, 0));
    SHOW("preadv2 offset -2", preadv2(c, &v, 1, -2, 0));
    SHOW("preadv2 RWF_NOWAIT, empty", preadv2(c, &v, 1, -1, RWF_NOWAIT));
    volatile int minus_one = -1, too_many = 1025; /* (not constants: the compiler would object) */
    SHOW("preadv2 cnt -1", preadv2(c, &v, minus_one, -1, 0));
    SHOW("preadv2 cnt 1025", preadv2(c, &v, too_many, -1, 0));
    SHOW("preadv2 offset 0 with RWF_ATOMIC", preadv2(c, &v, 1, 0, RWF_ATOMIC_));
    send_byte(c, 'g');
    wait_ready(c, POLLIN);
    SHOW("preadv2 an unknown flag, data queued", preadv2(c, &v, 1, -1, RWF_FUTURE_));
    SHOW_DATA("preadv2 4", buf, preadv2(c, &v, 1, -1, 0));
    SHOW_DATA("preadv64v2 at EOF", buf, preadv64v2(c, &v, 1, -1, 0));
    close(c);
}

static void client(const char *path) {
    int fd = connect_to(path);
    for (int i = 0; i < NFLAGS; i++) {
        expect_byte(fd, 'g');
        char msg[MSG + 1];
        snprintf(msg, sizeof msg, "msg-%02d-%-16s", i, FLAGS[i].name);
        struct iovec iov[2] = {{msg, 4}, {msg + 4, MSG - 4}};
        char label[96];
        snprintf(label, sizeof label, "%s %s", i % 2 ? "pwritev64v2" : "pwritev2", FLAGS[i].name);
        long r = SHOW(label, i % 2 ? pwritev64v2(fd, iov, 2, -1, FLAGS[i].flags) : pwritev2(fd, iov, 2, -1, FLAGS[i].flags));
        if (r < 0) SHOW("write instead", write(fd, "refused-refused-refused!", MSG));
    }
    struct iovec v = {"late", 4};
    SHOW("pwritev2 offset 0", pwritev2(fd, &v, 1, 0, 0));
    SHOW("pwritev2 offset -2", pwritev2(fd, &v, 1, -2, 0));
    volatile int too_many = 1025;
    SHOW("pwritev2 cnt 1025", pwritev2(fd, &v, too_many, -1, 0));
    SHOW("pwritev2 an unknown flag", pwritev2(fd, &v, 1, -1, RWF_FUTURE_));
    expect_byte(fd, 'g');
    SHOW("pwritev2 4", pwritev2(fd, &v, 1, -1, 0));
    SHOW("close", close(fd));
}

int main(int argc, char **argv) { return run_role(argc, argv, server, client); }
