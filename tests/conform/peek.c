/*
 * MSG_PEEK, ioctl FIONREAD, readv/writev and recvmsg across iovecs, MSG_WAITALL (pieces
 * arriving apart, and cut short by EOF).
 *
 *   peek server PATH / peek client PATH
 *
 * Every message is written in one call, and the server waits for it (blocking peek or
 * poll(-1)) before it looks, so counts are fixed. The client's pauses before the later
 * MSG_WAITALL pieces only make it likelier that the call really waits; they change no line.
 */
#include "conform.h"

#include <sys/ioctl.h>
#include <sys/uio.h>

static void fionread(int fd) {
    int n = -1;
    CHECK(ioctl(fd, FIONREAD, &n) == 0);
    say("ioctl FIONREAD -> %d", n);
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    char buf[128], a[8], b[16];
    SHOW_DATA("recv MSG_PEEK 4 (blocks for data)", buf, recv(c, buf, 4, MSG_PEEK));
    fionread(c);
    SHOW_DATA("recv MSG_PEEK 100", buf, recv(c, buf, 100, MSG_PEEK));
    SHOW_DATA("recv MSG_PEEK|MSG_DONTWAIT 100", buf, recv(c, buf, 100, MSG_PEEK | MSG_DONTWAIT));
    SHOW_DATA("recv 5", buf, recv(c, buf, 5, 0));
    fionread(c);
    struct iovec iov[2] = {{a, 3}, {b, 10}};
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
    long r = SHOW("recvmsg MSG_PEEK into 3+10", recvmsg(c, &m, MSG_PEEK));
    say("  iov0 %s", quoted(a, r < 3 ? r : 3));
    if (r > 3) say("  iov1 %s", quoted(b, r - 3));
    say("  msg_flags 0x%x", m.msg_flags);
    SHOW_DATA("read 100", buf, read(c, buf, 100));
    fionread(c);
    SHOW("recv MSG_PEEK|MSG_DONTWAIT empty", recv(c, buf, 100, MSG_PEEK | MSG_DONTWAIT));
    SHOW("recv MSG_DONTWAIT empty", recv(c, buf, 100, MSG_DONTWAIT));
    SHOW("read 0 bytes, nothing queued", read(c, buf, 0));
    SHOW("write 0 bytes", write(c, buf, 0));

    say("-- writev / readv");
    send_byte(c, 'g');
    wait_ready(c, POLLIN);
    struct iovec riov[3] = {{a, 2}, {b, 3}, {buf, 100}};
    r = SHOW("readv 2+3+100", readv(c, riov, 3));
    say("  iov0 %s", quoted(a, 2));
    say("  iov1 %s", quoted(b, 3));
    say("  iov2 %s", quoted(buf, r - 5));

    say("-- MSG_WAITALL");
    send_byte(c, 'g');
    SHOW_DATA("recv MSG_WAITALL 30", buf, recv(c, buf, 30, MSG_WAITALL));
    send_byte(c, 'g');
    SHOW_DATA("recv MSG_WAITALL 10 (peer sends 5 and closes)", buf, recv(c, buf, 10, MSG_WAITALL));
    SHOW_DATA("recv MSG_WAITALL 10 at EOF", buf, recv(c, buf, 10, MSG_WAITALL));
    SHOW_DATA("recv MSG_PEEK at EOF", buf, recv(c, buf, 10, MSG_PEEK));
    fionread(c);
}

static void client(const char *path) {
    int fd = connect_to(path);
    SHOW("write", write(fd, "hello world", 11));
    expect_byte(fd, 'g');
    struct iovec iov[3] = {{"ab", 2}, {"cdef", 4}, {"ghi", 3}};
    SHOW("writev 2+4+3", writev(fd, iov, 3));
    expect_byte(fd, 'g');
    for (int i = 0; i < 3; i++) {
        if (i) usleep(20000);
        SHOW("write 10", write(fd, "0123456789", 10));
    }
    expect_byte(fd, 'g');
    SHOW("send 5", send(fd, "abcde", 5, 0));
    usleep(20000);
    SHOW("close", close(fd));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
