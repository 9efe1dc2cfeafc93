/*
 * recvmmsg and sendmmsg on a stream socket: messages of several iovecs and of none, one sent
 * message split across received ones and the other way round, MSG_WAITFORONE, MSG_DONTWAIT,
 * MSG_PEEK, MSG_WAITALL per message, the timeout argument (left over, zero, invalid), vlen 0,
 * EOF as messages of 0 bytes, a non-blocking sendmmsg that stops at a partial message and then
 * gets EAGAIN, EPIPE, and SCM_RIGHTS in a sendmmsg/recvmmsg message (the connection is handed
 * back to the kernel for it).
 *
 *   mmsg server PATH / mmsg client PATH
 *
 * The client opens three connections: `data` (tested), `ctl`, on which the ends say when a
 * step's bytes are all sent (so every recvmmsg finds them there and its split is
 * deterministic) and how many bytes a partial message carried, and `fdc` (fd passing, last).
 * No line depends on the socket's buffer size or on timing.
 */
#include "conform.h"

#include <time.h>

#define MAXV 8
#define BIG (4u << 20) /* larger than any socket buffer or ring */

/* A message vector with its buffers: up to MAXV messages of up to 3 iovecs of 32 bytes. */
struct vec {
    struct mmsghdr m[MAXV];
    struct iovec iov[MAXV][3];
    char buf[MAXV][3][32];
};

/* Lays out a vector: "4,2+2,0" = three messages, of one 4-byte iovec, two 2-byte iovecs and
 * one empty iovec. Every msg_len starts at 77 (to show which ones a call filled). */
static int layout(struct vec *v, const char *spec) {
    memset(v, 0, sizeof *v);
    int i = 0, j = 0;
    const char *p = spec;
    while (*p) {
        char *end;
        long len = strtol(p, &end, 10);
        CHECK(end != p && i < MAXV && j < 3 && len >= 0 && len <= 32);
        p = end;
        v->iov[i][j].iov_base = v->buf[i][j];
        v->iov[i][j].iov_len = (size_t)len;
        j++;
        if (*p == '+') {
            p++;
            continue;
        }
        v->m[i].msg_hdr.msg_iov = v->iov[i];
        v->m[i].msg_hdr.msg_iovlen = (size_t)j;
        v->m[i].msg_len = 77;
        i++;
        j = 0;
        if (*p == ',') p++;
    }
    return i;
}

/* Prints a recvmmsg result: each filled message's msg_len, bytes and msg_flags, and whether
 * the message after the last one filled was left alone. */
static void show_recv(const char *what, struct vec *v, int n, int rc, int e) {
    if (rc < 0) {
        say("%s -> %s", what, rcstr(rc, e));
        return;
    }
    say("%s -> %d", what, rc);
    for (int i = 0; i < rc; i++) {
        char all[96];
        size_t at = 0, left = v->m[i].msg_len;
        for (size_t j = 0; j < v->m[i].msg_hdr.msg_iovlen && left > 0; j++) {
            size_t k = left < v->iov[i][j].iov_len ? left : v->iov[i][j].iov_len;
            memcpy(all + at, v->buf[i][j], k);
            at += k;
            left -= k;
        }
        say("  msg %d: msg_len %u %s msg_flags 0x%x", i, v->m[i].msg_len, quoted(all, (long)at), v->m[i].msg_hdr.msg_flags);
    }
    if (rc < n) say("  msg %d: msg_len %s", rc, v->m[rc].msg_len == 77 ? "untouched" : "changed");
}

#define RECV(what, v, n, call)                                                                 \
    do {                                                                                       \
        errno = 0;                                                                             \
        int r_ = (call);                                                                       \
        show_recv((what), (v), (n), r_, errno);                                                \
    } while (0)

/* Prints a sendmmsg result with each sent message's msg_len. */
static void show_send(const char *what, struct vec *v, int n, int rc, int e) {
    if (rc < 0) {
        say("%s -> %s", what, rcstr(rc, e));
        return;
    }
    say("%s -> %d", what, rc);
    for (int i = 0; i < rc; i++) say("  msg %d: msg_len %u", i, v->m[i].msg_len);
    if (rc < n) say("  msg %d: msg_len %s", rc, v->m[rc].msg_len == 77 ? "untouched" : "changed");
}

#define SEND(what, v, n, call)                                                                 \
    do {                                                                                       \
        errno = 0;                                                                             \
        int r_ = (call);                                                                       \
        show_send((what), (v), (n), r_, errno);                                                \
    } while (0)

static void send_u64(int fd, uint64_t v) { write_full(fd, &v, sizeof v); }

static uint64_t recv_u64(int fd) {
    uint64_t v;
    CHECK(read_full(fd, &v, sizeof v) == sizeof v);
    return v;
}

/* A vector of messages given as strings (an iovec split at each '|'). */
static int strings(struct vec *v, const char *const *msgs, int n) {
    memset(v, 0, sizeof *v);
    for (int i = 0; i < n; i++) {
        const char *s = msgs[i];
        int j = 0;
        for (;;) {
            const char *bar = strchr(s, '|');
            size_t k = bar ? (size_t)(bar - s) : strlen(s);
            CHECK(j < 3 && k <= 32);
            memcpy(v->buf[i][j], s, k);
            v->iov[i][j].iov_base = v->buf[i][j];
            v->iov[i][j].iov_len = k;
            j++;
            if (!bar) break;
            s = bar + 1;
        }
        v->m[i].msg_hdr.msg_iov = v->iov[i];
        v->m[i].msg_hdr.msg_iovlen = (size_t)j;
        v->m[i].msg_len = 77;
    }
    return n;
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int data = accept_one(lfd);
    int ctl = accept_one(lfd);
    static struct vec v;
    int n;

    /* 1. The client's sendmmsg: "alpha", "bravo-" "charlie", "", "delta". */
    expect_byte(ctl, '1');
    n = layout(&v, "4,2+2,4");
    RECV("recvmmsg 4, 2+2, 4", &v, n, recvmmsg(data, v.m, (unsigned)n, 0, NULL));
    n = layout(&v, "5,5,5,5");
    RECV("recvmmsg MSG_WAITFORONE 5, 5, 5, 5", &v, n, recvmmsg(data, v.m, (unsigned)n, MSG_WAITFORONE, NULL));
    RECV("recvmmsg MSG_DONTWAIT empty", &v, n, recvmmsg(data, v.m, (unsigned)n, MSG_DONTWAIT, NULL));
    RECV("recvmmsg MSG_WAITFORONE|MSG_DONTWAIT empty", &v, n, recvmmsg(data, v.m, (unsigned)n, MSG_WAITFORONE | MSG_DONTWAIT, NULL));
    RECV("recvmmsg vlen 0", &v, 0, recvmmsg(data, v.m, 0, 0, NULL));
    struct timespec bad = {.tv_sec = 0, .tv_nsec = 2000000000};
    RECV("recvmmsg timeout with tv_nsec 2e9", &v, n, recvmmsg(data, v.m, (unsigned)n, 0, &bad));
    bad.tv_sec = -1;
    bad.tv_nsec = 0;
    RECV("recvmmsg timeout -1 s", &v, n, recvmmsg(data, v.m, (unsigned)n, 0, &bad));
    send_byte(ctl, 'a');

    /* 2. "echo!!" "zerotm" "peekaboo": the timeout argument, MSG_PEEK. */
    expect_byte(ctl, '2');
    struct timespec ts = {.tv_sec = 5, .tv_nsec = 0};
    n = layout(&v, "3,3");
    RECV("recvmmsg 3, 3 timeout 5 s", &v, n, recvmmsg(data, v.m, (unsigned)n, 0, &ts));
    say("  timeout left in (0, 5 s): %s", ts.tv_sec >= 0 && ts.tv_nsec >= 0 && (ts.tv_sec > 0 || ts.tv_nsec > 0) && ts.tv_sec < 5 ? "yes" : "no");
    ts.tv_sec = 0;
    ts.tv_nsec = 0;
    n = layout(&v, "2,2,2");
    RECV("recvmmsg 2, 2, 2 timeout 0", &v, n, recvmmsg(data, v.m, (unsigned)n, 0, &ts));
    say("  timeout after: %ld.%09ld", (long)ts.tv_sec, (long)ts.tv_nsec);
    n = layout(&v, "2,2");
    RECV("recvmmsg 2, 2", &v, n, recvmmsg(data, v.m, (unsigned)n, 0, NULL));
    n = layout(&v, "4,4");
    RECV("recvmmsg MSG_PEEK 4, 4", &v, n, recvmmsg(data, v.m, (unsigned)n, MSG_PEEK, NULL));
    RECV("recvmmsg 4, 4", &v, n, recvmmsg(data, v.m, (unsigned)n, 0, NULL));

    /* 3. MSG_WAITALL: the second message waits for all of its 4 bytes, sent in two writes. */
    expect_byte(ctl, '3');
    send_byte(ctl, 'w');
    n = layout(&v, "4,4");
    RECV("recvmmsg MSG_WAITALL 4, 4", &v, n, recvmmsg(data, v.m, (unsigned)n, MSG_WAITALL, NULL));

    /* 4. The server's sendmmsg. */
    const char *const msgs[] = {"one", "two|-|three", "", "four"};
    n = strings(&v, msgs, 4);
    SEND("sendmmsg one, two|-|three, (empty), four", &v, n, sendmmsg(data, v.m, (unsigned)n, 0));
    SEND("sendmmsg vlen 0", &v, 0, sendmmsg(data, v.m, 0, 0));
    send_byte(ctl, '4');
    expect_byte(ctl, 'b');

    /* 5. A non-blocking sendmmsg stops at a partial message; the next one gets EAGAIN. */
    static struct mmsghdr big[3];
    static struct iovec big_iov[3];
    char *bytes = malloc(BIG + 32);
    CHECK(bytes);
    pat_fill(bytes, 0, BIG + 32);
    size_t lens[3] = {16, BIG, 16};
    size_t off = 0;
    for (int i = 0; i < 3; i++) {
        big_iov[i].iov_base = bytes + off;
        big_iov[i].iov_len = lens[i];
        big[i].msg_hdr.msg_iov = &big_iov[i];
        big[i].msg_hdr.msg_iovlen = 1;
        big[i].msg_len = 77;
        off += lens[i];
    }
    errno = 0;
    int rc = sendmmsg(data, big, 3, MSG_DONTWAIT);
    say("sendmmsg MSG_DONTWAIT 16, 4 MiB, 16 -> %s", rcstr(rc, errno));
    say("  msg 0: msg_len %u", big[0].msg_len);
    say("  msg 1: partial: %s", big[1].msg_len > 0 && big[1].msg_len < BIG ? "yes" : "no");
    say("  msg 2: msg_len %s", big[2].msg_len == 77 ? "untouched" : "changed");
    uint64_t sent = big[0].msg_len + (rc > 1 ? big[1].msg_len : 0);
    errno = 0;
    rc = sendmmsg(data, big + 2, 1, MSG_DONTWAIT);
    say("sendmmsg MSG_DONTWAIT when full -> %s", rcstr(rc, errno));
    send_u64(ctl, sent);
    expect_byte(ctl, 'c');

    /* 6. EOF: the client shut down writing after "tail". */
    expect_byte(ctl, '6');
    n = layout(&v, "8,8,8");
    RECV("recvmmsg 8, 8, 8 at EOF", &v, n, recvmmsg(data, v.m, (unsigned)n, 0, NULL));
    RECV("recvmmsg 8, 8, 8 after EOF", &v, n, recvmmsg(data, v.m, (unsigned)n, 0, NULL));

    /* 7. EPIPE: the client shut down reading. */
    expect_byte(ctl, '7');
    n = strings(&v, msgs, 2);
    SEND("sendmmsg MSG_NOSIGNAL after the peer's SHUT_RD", &v, n, sendmmsg(data, v.m, (unsigned)n, MSG_NOSIGNAL));
    SHOW("close data", close(data));

    /* 8. A pipe passed in the first of two sendmmsg messages on a swapped connection. */
    int fdc = accept_one(lfd);
    int p[2];
    CHECK(pipe(p) == 0);
    write_str(p[1], "through the pipe");
    CHECK(close(p[1]) == 0);
    const char *const passing[] = {"fd", "after"};
    n = strings(&v, passing, 2);
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof cbuf);
    v.m[0].msg_hdr.msg_control = cbuf;
    v.m[0].msg_hdr.msg_controllen = sizeof cbuf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&v.m[0].msg_hdr);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &p[0], sizeof(int));
    SEND("sendmmsg \"fd\" with SCM_RIGHTS, \"after\"", &v, n, sendmmsg(fdc, v.m, (unsigned)n, 0));
    CHECK(close(p[0]) == 0);
    expect_byte(fdc, 'k');
    SHOW("close fdc", close(fdc));
    SHOW("close ctl", close(ctl));
}

static void client(const char *path) {
    int data = connect_to(path);
    int ctl = connect_to(path);
    static struct vec v;
    int n;

    /* 1. */
    const char *const msgs[] = {"alpha", "bravo-|charlie", "", "delta"};
    n = strings(&v, msgs, 4);
    SEND("sendmmsg alpha, bravo-|charlie, (empty), delta", &v, n, sendmmsg(data, v.m, (unsigned)n, 0));
    send_byte(ctl, '1');
    expect_byte(ctl, 'a');

    /* 2. */
    const char *const more[] = {"echo!!", "zerotm", "peek|aboo"};
    n = strings(&v, more, 3);
    SEND("sendmmsg echo!!, zerotm, peek|aboo", &v, n, sendmmsg(data, v.m, (unsigned)n, 0));
    send_byte(ctl, '2');

    /* 3. */
    write_str(data, "abcd");
    send_byte(ctl, '3');
    expect_byte(ctl, 'w');
    write_str(data, "ef");
    write_str(data, "gh");

    /* 4. */
    expect_byte(ctl, '4');
    n = layout(&v, "6,6");
    struct sockaddr_un names[2];
    memset(names, 0, sizeof names);
    v.m[0].msg_hdr.msg_name = &names[0];
    v.m[0].msg_hdr.msg_namelen = sizeof names[0];
    v.m[1].msg_hdr.msg_name = &names[1];
    v.m[1].msg_hdr.msg_namelen = 4; /* too short: cut, its full length reported */
    RECV("recvmmsg 6, 6 with name buffers", &v, n, recvmmsg(data, v.m, (unsigned)n, 0, NULL));
    size_t full = offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1;
    say("  msg 0 name: the server's path: %s, length right: %s", strcmp(names[0].sun_path, path) == 0 ? "yes" : "no",
        v.m[0].msg_hdr.msg_namelen == full ? "yes" : "no");
    say("  msg 1 name: family %d, length right: %s", names[1].sun_family, v.m[1].msg_hdr.msg_namelen == full ? "yes" : "no");
    n = layout(&v, "2+6,8");
    RECV("recvmmsg MSG_WAITFORONE 2+6, 8", &v, n, recvmmsg(data, v.m, (unsigned)n, MSG_WAITFORONE, NULL));
    RECV("recvmmsg MSG_DONTWAIT empty", &v, n, recvmmsg(data, v.m, (unsigned)n, MSG_DONTWAIT, NULL));
    send_byte(ctl, 'b');

    /* 5. */
    uint64_t sent = recv_u64(ctl);
    char *buf = malloc(BIG + 32);
    CHECK(buf);
    size_t got = read_full(data, buf, (size_t)sent);
    say("read the partial sendmmsg, content ok: %s", got == sent && pat_check(buf, 0, got) ? "yes" : "no");
    n = layout(&v, "8");
    RECV("recvmmsg MSG_DONTWAIT drained", &v, n, recvmmsg(data, v.m, (unsigned)n, MSG_DONTWAIT, NULL));
    send_byte(ctl, 'c');

    /* 6. */
    write_str(data, "tail");
    SHOW("shutdown SHUT_WR", shutdown(data, SHUT_WR));
    send_byte(ctl, '6');

    /* 7. */
    SHOW("shutdown SHUT_RD", shutdown(data, SHUT_RD));
    send_byte(ctl, '7');

    /* 8. */
    int fdc = connect_to(path);
    n = layout(&v, "2,5");
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof cbuf);
    v.m[0].msg_hdr.msg_control = cbuf;
    v.m[0].msg_hdr.msg_controllen = sizeof cbuf;
    /* MSG_WAITALL: each message waits for all of its bytes. */
    RECV("recvmmsg 2 (with a control buffer), 5", &v, n, recvmmsg(fdc, v.m, (unsigned)n, MSG_WAITALL, NULL));
    struct cmsghdr *c = CMSG_FIRSTHDR(&v.m[0].msg_hdr);
    int passed = -1;
    if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) memcpy(&passed, CMSG_DATA(c), sizeof passed);
    say("  SCM_RIGHTS received: %s", passed >= 0 ? "yes" : "no");
    if (passed >= 0) {
        char pb[64];
        SHOW_DATA("read the passed pipe", pb, read(passed, pb, sizeof pb));
        CHECK(close(passed) == 0);
    }
    send_byte(fdc, 'k');
    char b;
    SHOW("read fdc after the server closed", read(fdc, &b, 1));
    SHOW("read ctl after the server closed", read(ctl, &b, 1));
    SHOW("close data", close(data));
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    return run_role(argc, argv, server, client);
}
