/*
 * Ancillary data on a connected stream socket: SCM_RIGHTS positioned in the byte stream.
 *
 *   ancdata server PATH / ancdata client PATH
 *
 * Where fds arrive (with the first byte of the data they were sent with; a read that stops
 * before that byte does not take them; a read stops after the bytes of a message with fds),
 * several fds per message and several messages in flight, MSG_PEEK, MSG_CTRUNC (the fds that
 * do not fit are closed: a pipe whose only read end was one of them gives EPIPE), a read
 * without a control buffer (fds closed), MSG_CMSG_CLOEXEC, fds both ways, a connected socket
 * passed over the connection, and sendmsg's bad control buffers (the kernel's errno, nothing
 * sent, nothing leaked). Every passed fd is the read end of a pipe holding a known word, or a
 * socket, so the transcript names what arrived without fd numbers.
 */
#include "conform.h"

#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>

#define MAXFDS 8

/* Waits until `n` bytes are queued for reading (the sender wrote them all). */
static void wait_inq(int fd, int n) {
    for (int i = 0; i < 20000; i++) {
        int q = 0;
        CHECK(ioctl(fd, FIONREAD, &q) == 0);
        if (q >= n) return;
        usleep(500);
    }
    die("only part of %d bytes arrived", n);
}

/* A pipe holding `word`; returns its read end, the write end in `*w` (or closed if w NULL). */
static int word_pipe(const char *word, int *w) {
    int p[2];
    CHECK(pipe(p) == 0);
    CHECK(write(p[1], word, strlen(word)) == (ssize_t)strlen(word));
    if (w)
        *w = p[1];
    else
        close(p[1]);
    return p[0];
}

/* sendmsg of `data` with `n` fds; prints the result. */
static long send_fds(int fd, const char *what, const char *data, const int *fds, int n) {
    struct iovec iov = {(void *)data, strlen(data)};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int) * MAXFDS)];
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (n > 0) {
        m.msg_control = u.buf;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * n);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * n);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
    }
    return SHOW(what, sendmsg(fd, &m, 0));
}

/* Describes a received fd: a pipe's word, or "socket"; then closes it. */
static const char *describe(int fd) {
    static char out[64];
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    if (S_ISSOCK(st.st_mode)) {
        snprintf(out, sizeof out, "socket");
    } else {
        char w[32];
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        ssize_t n = read(fd, w, sizeof w - 1);
        w[n > 0 ? n : 0] = 0;
        snprintf(out, sizeof out, "pipe \"%s\"", w);
    }
    return out;
}

/* recvmsg with room for `room` bytes and `cfds` fds (-1: no control buffer); prints data,
 * flags, the fds (described, then closed unless `keep`), and their close-on-exec bits. */
static long recv_fds(int fd, const char *what, size_t room, int cfds, int flags, int *keep) {
    char data[256];
    struct iovec iov = {data, room};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int) * MAXFDS)];
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (cfds >= 0) {
        m.msg_control = u.buf;
        m.msg_controllen = cfds == 0 ? 0 : CMSG_SPACE(sizeof(int) * cfds);
    }
    errno = 0;
    long n = recvmsg(fd, &m, flags);
    int e = errno;
    say("%s -> %s %s ctrunc=%d controllen=%zu", what, rcstr(n, e), n > 0 ? quoted(data, n) : "", !!(m.msg_flags & MSG_CTRUNC),
        (size_t)m.msg_controllen);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); n >= 0 && c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            say("  cmsg level %d type %d", c->cmsg_level, c->cmsg_type);
            continue;
        }
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int got[MAXFDS];
        memcpy(got, CMSG_DATA(c), sizeof(int) * k);
        for (int i = 0; i < k; i++) {
            int cloexec = !!(fcntl(got[i], F_GETFD) & FD_CLOEXEC);
            if (keep) {
                say("  fd %d: cloexec=%d (kept)", i, cloexec);
                keep[i] = got[i];
            } else {
                say("  fd %d: %s cloexec=%d", i, describe(got[i]), cloexec);
                close(got[i]);
            }
        }
    }
    return n;
}

static void ack(int fd) { CHECK(write(fd, "a", 1) == 1); }

static void acked(int fd) {
    char b;
    CHECK(read(fd, &b, 1) == 1 && b == 'a');
}

/* Whether a pipe still has a reader somewhere: EPIPE after the reader's last copy closed. */
static void probe_pipe(const char *what, int w) {
    signal(SIGPIPE, SIG_IGN);
    SHOW(what, write(w, "z", 1));
    close(w);
}

/* The sendmsg errors, each followed by nothing arriving (checked by the server). */
static void bad_sends(int fd) {
    char d = 'b';
    struct iovec iov = {&d, 1};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int) * 260)];
    } u;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf};
    struct cmsghdr *c = (struct cmsghdr *)u.buf;
    int r = word_pipe("never", NULL);

    memset(&u, 0, sizeof u);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = 5; /* shorter than a cmsghdr */
    m.msg_controllen = CMSG_SPACE(sizeof(int));
    SHOW("sendmsg bad cmsg_len", sendmsg(fd, &m, 0));

    c->cmsg_len = CMSG_LEN(sizeof(int)) + 64; /* beyond the buffer */
    SHOW("sendmsg cmsg_len past the buffer", sendmsg(fd, &m, 0));

    c->cmsg_len = CMSG_LEN(sizeof(int));
    int notopen = 987;
    memcpy(CMSG_DATA(c), &notopen, sizeof notopen);
    SHOW("sendmsg fd not open", sendmsg(fd, &m, 0));

    int many[254];
    for (int i = 0; i < 254; i++) many[i] = r;
    c->cmsg_len = CMSG_LEN(sizeof many);
    memcpy(CMSG_DATA(c), many, sizeof many);
    m.msg_controllen = CMSG_SPACE(sizeof many);
    SHOW("sendmsg 254 fds", sendmsg(fd, &m, 0));

    c->cmsg_len = CMSG_LEN(sizeof(int) * 253);
    m.msg_controllen = CMSG_SPACE(sizeof(int) * 253);
    SHOW("sendmsg 253 fds, no data", ({
             struct msghdr e = m;
             e.msg_iov = NULL;
             e.msg_iovlen = 0;
             sendmsg(fd, &e, 0);
         }));

    m.msg_control = (void *)1;
    m.msg_controllen = CMSG_SPACE(sizeof(int));
    SHOW("sendmsg control at a bad address", sendmsg(fd, &m, 0));

    m.msg_control = u.buf;
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = 77; /* no such SCM type */
    c->cmsg_len = CMSG_LEN(sizeof(int));
    m.msg_controllen = CMSG_SPACE(sizeof(int));
    SHOW("sendmsg unknown cmsg type", sendmsg(fd, &m, 0));
    close(r);
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    char b;

    say("-- a read stops before the fd byte; the next takes the fds and stops after");
    wait_inq(c, 12);
    recv_fds(c, "recvmsg 2", 2, 4, 0, NULL);
    recv_fds(c, "recvmsg 100", 100, 4, 0, NULL);
    recv_fds(c, "recvmsg 100", 100, 4, 0, NULL);
    ack(c);

    say("-- several messages in flight, several fds each");
    wait_inq(c, 8);
    recv_fds(c, "recvmsg 100", 100, 4, 0, NULL);
    recv_fds(c, "recvmsg 100", 100, 4, 0, NULL);
    recv_fds(c, "recvmsg 100", 100, 4, 0, NULL);
    ack(c);

    say("-- partial reads and peeks around the fd byte");
    wait_inq(c, 8);
    recv_fds(c, "recvmsg 1", 1, 4, 0, NULL);
    recv_fds(c, "recvmsg peek 10", 10, 4, MSG_PEEK, NULL);
    recv_fds(c, "recvmsg 1", 1, 4, 0, NULL);
    recv_fds(c, "recvmsg peek 10", 10, 4, MSG_PEEK, NULL);
    recv_fds(c, "recvmsg 3", 3, 4, 0, NULL);
    recv_fds(c, "recvmsg 10", 10, 4, 0, NULL);
    ack(c);

    say("-- MSG_CTRUNC, no control buffer, MSG_CMSG_CLOEXEC");
    wait_inq(c, 7);
    recv_fds(c, "recvmsg room for 1 of 3 fds", 100, 1, 0, NULL);
    recv_fds(c, "recvmsg controllen 0", 100, 0, 0, NULL);
    char buf[8];
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    recv_fds(c, "recvmsg cloexec", 100, 4, MSG_CMSG_CLOEXEC, NULL);
    b = 'k';
    CHECK(write(c, &b, 1) == 1);

    say("-- fds the other way");
    int w1, w2;
    int fds[2] = {word_pipe("to-client-1", &w1), word_pipe("to-client-2", &w2)};
    send_fds(c, "sendmsg 2 fds", "srv", fds, 2);
    close(fds[0]);
    close(fds[1]);
    CHECK(read(c, &b, 1) == 1);
    probe_pipe("write to pipe 1 after the client closed it", w1);
    probe_pipe("write to pipe 2 after the client closed it", w2);

    say("-- a connected socket passed over the connection");
    int c2 = accept_one(lfd);
    int kept[MAXFDS] = {-1};
    recv_fds(c, "recvmsg the client's end", 100, 4, 0, kept);
    SHOW("write on the received end", write(kept[0], "via-passed", 10));
    char got[16];
    SHOW_DATA("read on the accepted end", got, read(c2, got, 10));
    SHOW("write on the accepted end", write(c2, "back", 4));
    SHOW_DATA("read on the received end", got, read(kept[0], got, 4));
    SHOW("close the received end", close(kept[0]));
    SHOW_DATA("read on the accepted end", got, read(c2, got, sizeof got));
    close(c2);

    say("-- bad control buffers: nothing arrives but what follows");
    CHECK(write(c, "g", 1) == 1);
    wait_inq(c, 2);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    recv_fds(c, "recvmsg", 100, 4, MSG_DONTWAIT, NULL);
    CHECK(write(c, "e", 1) == 1);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    close(c);
}

static void client(const char *path) {
    int fd = connect_to(path);
    char b;
    int w[4];

    int one = word_pipe("first", NULL);
    SHOW("write abc", write(fd, "abc", 3));
    send_fds(fd, "sendmsg DEF + 1 fd", "DEF", &one, 1);
    SHOW("write ghijkl", write(fd, "ghijkl", 6));
    close(one);
    acked(fd);

    int two[2] = {word_pipe("m1-a", NULL), word_pipe("m1-b", NULL)};
    send_fds(fd, "sendmsg m1 + 2 fds", "m1", two, 2);
    int m2 = word_pipe("m2", NULL);
    send_fds(fd, "sendmsg m2 + 1 fd", "m2", &m2, 1);
    SHOW("write m3", write(fd, "m3", 2));
    int m4 = word_pipe("m4", NULL);
    send_fds(fd, "sendmsg m4 + 1 fd", "m4", &m4, 1);
    close(two[0]);
    close(two[1]);
    close(m2);
    close(m4);
    acked(fd);

    int p = word_pipe("partial", NULL);
    SHOW("write xy", write(fd, "xy", 2));
    send_fds(fd, "sendmsg ABCDEF + 1 fd", "ABCDEF", &p, 1);
    close(p);
    acked(fd);

    int three[3] = {word_pipe("t1", &w[0]), word_pipe("t2", &w[1]), word_pipe("t3", &w[2])};
    send_fds(fd, "sendmsg T + 3 fds", "T", three, 3);
    int lost = word_pipe("lost", &w[3]);
    send_fds(fd, "sendmsg U + 1 fd", "U", &lost, 1);
    int lost2 = word_pipe("lost-too", NULL);
    send_fds(fd, "sendmsg VWXY + 1 fd", "VWXY", &lost2, 1);
    int ce = word_pipe("cloexec", NULL);
    send_fds(fd, "sendmsg Z + 1 fd", "Z", &ce, 1);
    for (int i = 0; i < 3; i++) close(three[i]);
    close(lost);
    close(lost2);
    close(ce);
    CHECK(read(fd, &b, 1) == 1 && b == 'k');
    probe_pipe("write to t1 (received, closed by the server)", w[0]);
    probe_pipe("write to t2 (closed by MSG_CTRUNC)", w[1]);
    probe_pipe("write to t3 (closed by MSG_CTRUNC)", w[2]);
    probe_pipe("write to lost (no room for it)", w[3]);

    recv_fds(fd, "recvmsg", 100, 4, 0, NULL);
    b = 'd';
    CHECK(write(fd, &b, 1) == 1);

    int c2 = connect_to(path);
    send_fds(fd, "sendmsg pass the second connection", "sock", &c2, 1);
    SHOW("close own copy", close(c2));

    CHECK(read(fd, &b, 1) == 1 && b == 'g');
    bad_sends(fd);
    SHOW("write ok", write(fd, "ok", 2));
    CHECK(read(fd, &b, 1) == 1 && b == 'e');
    close(fd);
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
