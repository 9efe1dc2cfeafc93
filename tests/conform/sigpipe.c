/*
 * SIGPIPE and EPIPE once the peer is gone, MSG_NOSIGNAL, and ECONNRESET when the peer closed
 * with bytes it never read.
 *
 *   sigpipe server PATH / sigpipe client PATH
 *
 * Connection 1: the server reads the client's 'g' and closes. The client waits for EOF, then
 * writes with a counting SIGPIPE handler, with MSG_NOSIGNAL, with SIG_IGN, and finally in a
 * forked child with the default action (the child dies of SIGPIPE).
 * Connection 2: the client writes bytes that the server never reads; the server closes; the
 * client's next read gets ECONNRESET once, then EOF.
 * Connection 3: as 2, but the server's end is accepted by a forked child that dies of SIGTERM
 * (the kernel closes its socket: no close of the application's, as when PHP-FPM's master
 * kills a child that overran request_terminate_timeout): ECONNRESET once, then EOF, all the
 * same.
 */
#include "conform.h"

#include <sys/uio.h>

static volatile sig_atomic_t caught;

static void on_pipe(int sig) {
    (void)sig;
    caught++;
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int c1 = accept_one(lfd);
    expect_byte(c1, 'g');
    SHOW("close 1", close(c1));
    int c2 = accept_one(lfd);
    wait_ready(c2, POLLIN);
    SHOW("close 2 with unread bytes", close(c2));
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        int c3 = accept_one(lfd);
        expect_byte(c3, 'h');
        send_byte(c3, 'H');
        wait_ready(c3, POLLIN);
        signal(SIGTERM, SIG_DFL);
        raise(SIGTERM);
        _exit(1);
    }
    say("child that accepted 3 with unread bytes: %s", statusstr(wait_child(child)));
}

static void client(const char *path) {
    char buf[16];
    int fd = connect_to(path);
    send_byte(fd, 'g');
    SHOW_DATA("read", buf, read(fd, buf, sizeof buf));
    on_signal(SIGPIPE, on_pipe, 0);
    SHOW("write", write(fd, "x", 1));
    say("SIGPIPE caught: %d", (int)caught);
    SHOW("send MSG_NOSIGNAL", send(fd, "x", 1, MSG_NOSIGNAL));
    say("SIGPIPE caught: %d", (int)caught);
    struct iovec iov = {"xy", 2};
    SHOW("writev", writev(fd, &iov, 1));
    say("SIGPIPE caught: %d", (int)caught);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    SHOW("sendmsg MSG_NOSIGNAL", sendmsg(fd, &m, MSG_NOSIGNAL));
    SHOW("sendmsg", sendmsg(fd, &m, 0));
    SHOW("sendto", sendto(fd, "x", 1, 0, NULL, 0));
    say("SIGPIPE caught: %d", (int)caught);
    signal(SIGPIPE, SIG_IGN);
    SHOW("write with SIG_IGN", write(fd, "x", 1));
    say("SIGPIPE caught: %d", (int)caught);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        signal(SIGPIPE, SIG_DFL);
        if (write(fd, "x", 1) < 0) _exit(0); /* (a fortified build warns about an ignored result) */
        _exit(0);
    }
    say("child writing with the default action: %s", statusstr(wait_child(child)));
    SHOW("close", close(fd));

    int fd2 = connect_to(path);
    SHOW("write 2", write(fd2, "unread", 6));
    poll_one("poll(-1) POLLIN", fd2, POLLIN, -1);
    SHOW("read after peer closed with unread bytes", read(fd2, buf, sizeof buf));
    SHOW_DATA("read again", buf, read(fd2, buf, sizeof buf));
    SHOW("write", write(fd2, "x", 1));
    SHOW("close 2", close(fd2));

    int fd3 = connect_to(path);
    send_byte(fd3, 'h');
    expect_byte(fd3, 'H');
    SHOW("write 3", write(fd3, "unread", 6));
    poll_one("poll(-1) POLLIN", fd3, POLLIN, -1);
    SHOW("read after the peer died with unread bytes", read(fd3, buf, sizeof buf));
    SHOW_DATA("read again", buf, read(fd3, buf, sizeof buf));
    SHOW("close 3", close(fd3));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
