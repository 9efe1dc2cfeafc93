/*
 * What the differential random test (tssx-user/hook/tests/differential.rs) found, end to end:
 * POLLWRBAND with POLLOUT; calls of no bytes (read/readv return 0 at once, recv/recvmsg wait
 * like a one-byte read: EAGAIN when non-blocking and empty); recvmsg's msg_flags keep
 * MSG_CMSG_CLOEXEC; writev of no bytes after shutdown(SHUT_WR) returns 0 where send fails with
 * EPIPE; a peer whose last fd is replaced by dup2 with bytes unread resets the connection, and
 * a MSG_WAITALL read that meets the reset takes it (returning its bytes); SIOCOUTQ once the
 * peer is gone.
 *
 *   edges server PATH / edges client PATH
 *
 * The client waits for the server's sync byte and for its shutdown; the server waits for the
 * client's dup2 (POLLRDHUP) before it reads up to the reset, so every line is fixed.
 */
#include "conform.h"

#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/uio.h>

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    char buf[64];
    struct iovec none = {buf, 0};

    say("-- readiness of a writable socket");
    poll_one("poll POLLOUT|POLLWRNORM|POLLWRBAND", c, POLLOUT | POLLWRNORM | POLLWRBAND, 0);

    say("-- calls of no bytes, nothing queued, non-blocking");
    set_nonblock(c, 1);
    SHOW("read 0", read(c, buf, 0));
    SHOW("readv 0", readv(c, &none, 1));
    SHOW("recv 0", recv(c, buf, 0, 0));
    struct msghdr m0 = {.msg_iov = &none, .msg_iovlen = 1};
    SHOW("recvmsg 0", recvmsg(c, &m0, 0));
    set_nonblock(c, 0);
    send_byte(c, 'g');
    wait_ready(c, POLLIN);
    SHOW("recv 0, bytes queued", recv(c, buf, 0, 0));

    say("-- recvmsg's msg_flags");
    struct iovec two = {buf, 2};
    struct msghdr m = {.msg_iov = &two, .msg_iovlen = 1};
    SHOW_DATA("recvmsg MSG_CMSG_CLOEXEC 2", buf, recvmsg(c, &m, MSG_CMSG_CLOEXEC));
    say("  msg_flags 0x%x", m.msg_flags);
    SHOW_DATA("recv MSG_WAITALL 3", buf, recv(c, buf, 3, MSG_WAITALL));

    say("-- no bytes after shutdown(SHUT_WR)");
    SHOW("write 4 (the client leaves them unread)", write(c, "data", 4));
    SHOW("shutdown SHUT_WR", shutdown(c, SHUT_WR));
    SHOW("writev 0", writev(c, &none, 1));
    SHOW("send 0 MSG_NOSIGNAL", send(c, buf, 0, MSG_NOSIGNAL));
    SHOW("send 1 MSG_NOSIGNAL", send(c, "x", 1, MSG_NOSIGNAL));

    say("-- the client's fd replaced by dup2, 4 bytes unread");
    wait_ready(c, POLLRDHUP);
    poll_one("poll POLLIN", c, POLLIN, 0);
    SHOW_DATA("recv MSG_WAITALL 10 (3 bytes, then the reset)", buf, recv(c, buf, 10, MSG_WAITALL));
    poll_one("poll POLLIN", c, POLLIN, 0);
    SHOW("recv 10", recv(c, buf, 10, 0));
    int n = -1;
    SHOW("ioctl SIOCOUTQ", ioctl(c, SIOCOUTQ, &n));
    say("  -> %d", n);
    SHOW("close", close(c));
}

static void client(const char *path) {
    int fd = connect_to(path);
    expect_byte(fd, 'g');
    SHOW("write 5", write(fd, "hello", 5));
    wait_ready(fd, POLLRDHUP);
    int n = -1;
    SHOW("ioctl FIONREAD", ioctl(fd, FIONREAD, &n));
    say("  -> %d", n);
    SHOW("write 3", write(fd, "abc", 3));
    int other = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK(other >= 0);
    SHOW("dup2 /dev/null over the socket", dup2(other, fd) == fd ? 0 : -1);
    SHOW("close /dev/null", close(other));
    SHOW("close", close(fd));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
