/*
 * SCM_CREDENTIALS on a connected stream socket, with and without SO_PASSCRED.
 *
 *   creds server PATH / creds client PATH
 *
 * Without SO_PASSCRED on the reader, credentials sent explicitly are checked by the kernel at
 * the send (a process that is not root may not claim another uid: EPERM; root may) and never
 * delivered. With SO_PASSCRED every read comes with the writer's credentials (the explicit
 * ones where they were sent). Pids and ids are printed relative to the sender's own.
 *
 *   creds server PATH listener / creds client PATH listener
 *
 * The same with SO_PASSCRED set on the listener before the accept (the accepted socket inherits
 * it): credentials with every read from the first byte on, which only the kernel gives, so the
 * connection must stay on the socket (no warm-up: it never gets a segment).
 *
 *   creds server PATH unread / creds client PATH unread
 *
 * SO_PASSCRED turned on while bytes sent without it are unread (on a swapped connection: on
 * the ring): the kernel gives them "no credentials" (pid 0, the overflow uid and gid), with
 * MSG_CTRUNC when there is no room, and never glues them in one read with the bytes sent
 * after, which carry the writer's (the writer writes them before it reads anything, having
 * only polled: on a swapped connection its write must follow the reader's hand-back); a peek
 * shows the same.
 *
 *   creds server PATH listener-late / creds client PATH listener-late
 *
 * SO_PASSCRED set on the listener after its first connection was accepted (and swapped): that
 * one is unchanged (no credentials), the next one inherits the option and reads credentials
 * from its first byte on (so it stays on the socket).
 */
#include "conform.h"

#include <sys/ioctl.h>
#include <sys/uio.h>

static pid_t client_pid;
/* "listener" mode (see the top). */
static int passcred_listener;

static long send_creds(int fd, const char *what, const char *data, int explicit, pid_t pid, uid_t uid, gid_t gid) {
    struct iovec iov = {(void *)data, strlen(data)};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(struct ucred))];
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (explicit) {
        m.msg_control = u.buf;
        m.msg_controllen = sizeof u.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_CREDENTIALS;
        c->cmsg_len = CMSG_LEN(sizeof(struct ucred));
        struct ucred cr = {.pid = pid, .uid = uid, .gid = gid};
        memcpy(CMSG_DATA(c), &cr, sizeof cr);
    }
    return SHOW(what, sendmsg(fd, &m, 0));
}

static const char *idstr(long v, long own) {
    static char buf[4][32];
    static int at;
    char *b = buf[at++ % 4];
    if (v == own)
        snprintf(b, 32, "own");
    else
        snprintf(b, 32, "%ld", v);
    return b;
}

/* recvmsg of at most `room` bytes with `flags`, a control buffer of `ctl` bytes (at most 64;
 * 0: none); prints what came. */
static void recv_creds_with(int fd, const char *what, size_t room, int flags, size_t ctl) {
    char data[128];
    struct iovec iov = {data, room};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(struct ucred)) * 2];
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl ? u.buf : NULL, .msg_controllen = ctl};
    errno = 0;
    long n = recvmsg(fd, &m, flags);
    int e = errno;
    say("%s -> %s %s ctrunc=%d controllen=%zu", what, rcstr(n, e), n > 0 ? quoted(data, n) : "", !!(m.msg_flags & MSG_CTRUNC),
        (size_t)m.msg_controllen);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); n >= 0 && c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
            struct ucred cr;
            memcpy(&cr, CMSG_DATA(c), sizeof cr);
            say("  credentials: pid %s uid %s gid %s", cr.pid == client_pid ? "client" : cr.pid == getpid() ? "self" : "other",
                idstr(cr.uid, getuid()), idstr(cr.gid, getgid()));
        } else {
            say("  cmsg level %d type %d", c->cmsg_level, c->cmsg_type);
        }
    }
}

static void recv_creds(int fd, const char *what, size_t room) {
    recv_creds_with(fd, what, room, 0, CMSG_SPACE(sizeof(struct ucred)) * 2);
}

static void wait_inq(int fd, int n) {
    for (int i = 0; i < 20000; i++) {
        int q = 0;
        CHECK(ioctl(fd, FIONREAD, &q) == 0);
        if (q >= n) return;
        usleep(500);
    }
    die("only part of %d bytes arrived", n);
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    CHECK(read(c, &client_pid, sizeof client_pid) == sizeof client_pid);
    char b;

    say("-- without SO_PASSCRED");
    wait_inq(c, 6);
    recv_creds(c, "recvmsg", 100);
    CHECK(write(c, "a", 1) == 1);
    recv_creds(c, "recvmsg from the unprivileged child", 100);

    say("-- SO_PASSCRED on");
    int one = 1;
    SHOW("setsockopt SO_PASSCRED", setsockopt(c, SOL_SOCKET, SO_PASSCRED, &one, sizeof one));
    CHECK(write(c, "b", 1) == 1);
    wait_inq(c, 4);
    recv_creds(c, "recvmsg", 100);
    CHECK(write(c, "c", 1) == 1);
    wait_inq(c, 6);
    recv_creds(c, "recvmsg", 100);
    recv_creds(c, "recvmsg", 100);
    CHECK(write(c, "d", 1) == 1);
    recv_creds(c, "recvmsg from the unprivileged child", 100);
    CHECK(read(c, &b, 0) == 0);
    recv_creds(c, "recvmsg", 100);
    close(c);
}

/* Forks a child that drops to nobody and sends `data` with credentials claiming uid 0, then
 * its own. */
static void unprivileged(int fd, const char *data) {
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        CHECK(setresgid(65534, 65534, 65534) == 0);
        CHECK(setresuid(65534, 65534, 65534) == 0);
        send_creds(fd, "child: sendmsg claiming uid 0", data, 1, getpid(), 0, 65534);
        send_creds(fd, "child: sendmsg claiming gid 0", data, 1, getpid(), 65534, 0);
        send_creds(fd, "child: sendmsg claiming pid 1", data, 1, 1, 65534, 65534);
        send_creds(fd, "child: sendmsg with its own", data, 1, getpid(), 65534, 65534);
        _exit(0);
    }
    say("child %s", statusstr(wait_child(child)));
}

static void client(const char *path) {
    int fd = connect_to(path);
    pid_t me = getpid();
    CHECK(write(fd, &me, sizeof me) == sizeof me);
    char b;

    send_creds(fd, "sendmsg own credentials", "ab", 1, me, getuid(), getgid());
    send_creds(fd, "sendmsg claiming uid 12345 (root may)", "cd", 1, me, 12345, 12345);
    send_creds(fd, "sendmsg claiming a pid that is not its own", "ef", 1, getppid(), getuid(), getgid());
    CHECK(read(fd, &b, 1) == 1);
    unprivileged(fd, "xy");

    CHECK(read(fd, &b, 1) == 1);
    SHOW("write gh", write(fd, "gh", 2));
    send_creds(fd, "sendmsg own credentials", "ij", 1, me, getuid(), getgid());
    CHECK(read(fd, &b, 1) == 1);
    send_creds(fd, "sendmsg claiming uid 12345 (root may)", "kl", 1, me, 12345, 12345);
    SHOW("write mnop", write(fd, "mnop", 4));
    CHECK(read(fd, &b, 1) == 1);
    unprivileged(fd, "zz");
    close(fd);
}

/* "listener" mode: SO_PASSCRED on the listener before the accept; one message at a time,
 * each acknowledged (reads stop where the credentials change, so messages in flight would make
 * the plain transcript depend on timing). The client writes only after the accept: bytes
 * queued before it may or may not carry credentials, even on a plain socket. */
static void server_listener(const char *path) {
    /* As listen_on, with the option set before anyone can connect. */
    socklen_t len;
    struct sockaddr_un a = address(path, &len);
    unlink(path);
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(lfd >= 0);
    int on = 1;
    CHECK(setsockopt(lfd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) == 0);
    CHECK(bind(lfd, (struct sockaddr *)&a, len) == 0);
    CHECK(listen(lfd, 256) == 0);
    say("listening"); /* (the first line: the runner starts the client on it) */
    say("SO_PASSCRED set on the listener before its listen");
    int c;
    while ((c = accept(lfd, NULL, NULL)) < 0 && errno == EINTR) {}
    CHECK(c >= 0);
    CHECK(write(c, "s", 1) == 1);
    CHECK(read(c, &client_pid, sizeof client_pid) == sizeof client_pid);
    for (int i = 0; i < 4; i++) {
        wait_inq(c, 2);
        recv_creds(c, "recvmsg", 100);
        CHECK(write(c, "k", 1) == 1);
    }
    recv_creds(c, "recvmsg at EOF", 100);
    close(c);
}

static void client_listener(const char *path) {
    int fd = connect_plain(path);
    char b;
    CHECK(read(fd, &b, 1) == 1);
    pid_t me = getpid();
    CHECK(write(fd, &me, sizeof me) == sizeof me);
    for (int i = 0; i < 4; i++) {
        /* Past the agent's claim delay: the connection would claim now. */
        usleep(3000);
        SHOW("write ab", write(fd, "ab", 2));
        CHECK(read(fd, &b, 1) == 1);
    }
    close(fd);
}

/* "unread" mode (see the top). */
static void server_unread(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    /* The client writes only after the accept: bytes queued before it carry credentials. */
    CHECK(write(c, "s", 1) == 1);
    CHECK(read(c, &client_pid, sizeof client_pid) == sizeof client_pid);
    /* "pq" and "PQ", sent without credentials, unread when the option goes on. */
    wait_inq(c, 4);
    int one = 1;
    SHOW("setsockopt SO_PASSCRED with 4 bytes unread", setsockopt(c, SOL_SOCKET, SO_PASSCRED, &one, sizeof one));
    CHECK(write(c, "a", 1) == 1);
    /* "rs", sent after: the client's credentials. */
    wait_inq(c, 6);
    recv_creds_with(c, "recvmsg MSG_PEEK", 100, MSG_PEEK, 64);
    recv_creds_with(c, "recvmsg 3 without a control buffer", 3, 0, 0);
    recv_creds_with(c, "recvmsg with 8 bytes of control buffer", 100, 0, 8);
    recv_creds_with(c, "recvmsg MSG_PEEK", 100, MSG_PEEK, 64);
    recv_creds(c, "recvmsg", 100);
    CHECK(write(c, "b", 1) == 1);
    /* "tu" and "vw" again in one read (the same credentials). */
    wait_inq(c, 4);
    recv_creds(c, "recvmsg", 100);
    CHECK(write(c, "c", 1) == 1);
    recv_creds(c, "recvmsg at EOF", 100);
    close(c);
}

static void client_unread(const char *path) {
    int fd = connect_to(path);
    char b;
    CHECK(read(fd, &b, 1) == 1);
    pid_t me = getpid();
    CHECK(write(fd, &me, sizeof me) == sizeof me);
    SHOW("write pq", write(fd, "pq", 2));
    SHOW("write PQ", write(fd, "PQ", 2));
    /* The server's byte is there (it set the option before): written before reading it. */
    wait_for(fd, POLLIN);
    SHOW("write rs", write(fd, "rs", 2));
    CHECK(read(fd, &b, 1) == 1);
    CHECK(read(fd, &b, 1) == 1);
    SHOW("write tu", write(fd, "tu", 2));
    SHOW("write vw", write(fd, "vw", 2));
    CHECK(read(fd, &b, 1) == 1);
    close(fd);
}

/* "listener-late" mode (see the top). */
static void server_listener_late(const char *path) {
    int lfd = listen_on(path);
    int first = accept_one(lfd);
    /* The client writes only after the accept (see `server_unread`). */
    CHECK(write(first, "s", 1) == 1);
    CHECK(read(first, &client_pid, sizeof client_pid) == sizeof client_pid);
    wait_inq(first, 2);
    recv_creds(first, "first connection: recvmsg", 100);
    int on = 1;
    SHOW("setsockopt SO_PASSCRED on the listener", setsockopt(lfd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on));
    /* The client connects again only now. */
    CHECK(write(first, "L", 1) == 1);
    int c;
    while ((c = accept(lfd, NULL, NULL)) < 0 && errno == EINTR) {}
    CHECK(c >= 0);
    int got = 0;
    socklen_t len = sizeof got;
    CHECK(getsockopt(c, SOL_SOCKET, SO_PASSCRED, &got, &len) == 0);
    say("second connection: SO_PASSCRED %d", got);
    CHECK(write(c, "s", 1) == 1);
    for (int i = 0; i < 4; i++) {
        wait_inq(c, 2);
        recv_creds(c, "second connection: recvmsg", 100);
        CHECK(write(c, "k", 1) == 1);
    }
    recv_creds(c, "second connection: recvmsg at EOF", 100);
    /* The first one is unchanged. */
    wait_inq(first, 2);
    recv_creds(first, "first connection: recvmsg", 100);
    CHECK(write(first, "k", 1) == 1);
    recv_creds(first, "first connection: recvmsg at EOF", 100);
    close(c);
    close(first);
}

static void client_listener_late(const char *path) {
    int first = connect_to(path);
    char b;
    CHECK(read(first, &b, 1) == 1);
    pid_t me = getpid();
    CHECK(write(first, &me, sizeof me) == sizeof me);
    SHOW("first connection: write ab", write(first, "ab", 2));
    CHECK(read(first, &b, 1) == 1);
    int fd = connect_plain(path);
    CHECK(read(fd, &b, 1) == 1);
    for (int i = 0; i < 4; i++) {
        /* Past the agent's claim delay: the connection would claim now. */
        usleep(3000);
        SHOW("second connection: write ab", write(fd, "ab", 2));
        CHECK(read(fd, &b, 1) == 1);
    }
    close(fd);
    SHOW("first connection: write cd", write(first, "cd", 2));
    CHECK(read(first, &b, 1) == 1);
    close(first);
}

int main(int argc, char **argv) {
    if (argc > 3 && strcmp(argv[3], "unread") == 0) return run_role(argc, argv, server_unread, client_unread);
    if (argc > 3 && strcmp(argv[3], "listener-late") == 0) return run_role(argc, argv, server_listener_late, client_listener_late);
    passcred_listener = argc > 3 && strcmp(argv[3], "listener") == 0;
    if (passcred_listener) return run_role(argc, argv, server_listener, client_listener);
    return run_role(argc, argv, server, client);
}
