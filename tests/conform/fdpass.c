/*
 * Passing a connected socket to another process with SCM_RIGHTS (a "dispatcher" server).
 *
 *   fdpass server PATH / fdpass client PATH
 *
 * The server forks a worker linked to it by a socketpair, accepts the client's connection,
 * reads its first message, sends the connection's fd to the worker and closes its own copy.
 * The worker, which never saw the connection before, reads the rest (sent before the pass),
 * answers, and reads until EOF. The server prints the worker's lines only after it exited.
 */
#include "conform.h"

#include <sys/uio.h>

static void send_fd(int chan, int fd) {
    char byte = 'F';
    struct iovec iov = {&byte, 1};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    CHECK(sendmsg(chan, &m, 0) == 1);
}

static int recv_fd(int chan) {
    char byte;
    struct iovec iov = {&byte, 1};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } u;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    CHECK(recvmsg(chan, &m, 0) == 1);
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    CHECK(c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS);
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

static void worker(int chan) {
    int fd = recv_fd(chan);
    static char buf[20000];
    size_t got = read_full(fd, buf, 20000);
    say("worker: read %zu bytes sent before the pass, content ok: %s", got, pat_check(buf, 1000, got) ? "yes" : "no");
    SHOW("worker: write", write(fd, "from-worker", 11));
    got = read_full(fd, buf, sizeof buf);
    say("worker: read %zu more bytes, content ok: %s", got, pat_check(buf, 21000, got) ? "yes" : "no");
    SHOW_DATA("worker: read", buf, read(fd, buf, sizeof buf));
    SHOW("worker: close", close(fd));
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int sp[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        close(sp[0]);
        close(lfd);
        worker(sp[1]);
        _exit(0);
    }
    close(sp[1]);
    int c = accept_one(lfd);
    char buf[1000];
    size_t got = read_full(c, buf, sizeof buf);
    say("read %zu bytes, content ok: %s", got, pat_check(buf, 0, got) ? "yes" : "no");
    send_fd(sp[0], c);
    /* The worker prints meanwhile: report the close only after it exited. */
    errno = 0;
    int rc = close(c), err = errno;
    int st = wait_child(child);
    say("close own copy -> %s", rcstr(rc, err));
    say("worker %s", statusstr(st));
}

static void client(const char *path) {
    int fd = connect_to(path);
    static char buf[41000];
    pat_fill(buf, 0, sizeof buf);
    SHOW("write 21000", write(fd, buf, 21000));
    expect_str(fd, "from-worker");
    say("read from-worker");
    write_full(fd, buf + 21000, 20000);
    say("wrote 20000");
    SHOW("close", close(fd));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
