/*
 * dup, dup2, dup3, F_DUPFD, F_DUPFD_CLOEXEC: every copy is the same connection (bytes in order
 * through any copy, shared O_NONBLOCK), closing one copy keeps the connection, the last close
 * is the peer's EOF, and dup2 over the last copy of another connection closes that one.
 *
 *   dup server PATH / dup client PATH
 *
 * Connection 1 exercises the copies; connections 2 and 3 exercise dup2 onto a live socket
 * (once the server has accepted both, so that connection 3 is established on both ends).
 * Each message from the client proves that the connection is still open; the server prints
 * what it read, in order.
 */
#include "conform.h"

static void show_msgs(int c, int count) {
    char buf[64];
    for (int i = 0; i < count; i++) {
        uint32_t len;
        size_t n = read_full(c, &len, sizeof len);
        if (n == 0) {
            say("read -> 0 EOF");
            return;
        }
        CHECK(n == sizeof len && len < sizeof buf);
        CHECK(read_full(c, buf, len) == len);
        say("read %s", quoted(buf, len));
    }
}

/* A length-prefixed message, in one write. */
static void msg(int fd, const char *s) {
    char buf[64];
    uint32_t len = (uint32_t)strlen(s);
    memcpy(buf, &len, sizeof len);
    memcpy(buf + sizeof len, s, len);
    CHECK(write(fd, buf, sizeof len + len) == (ssize_t)(sizeof len + len));
}

static void server(const char *path) {
    int lfd = listen_on(path);
    char buf[16];
    int c = accept_one(lfd);
    show_msgs(c, 6);
    SHOW("write 123456", write(c, "123456", 6));
    show_msgs(c, 3);
    SHOW_DATA("read after the last copy closed", buf, read(c, buf, sizeof buf));
    SHOW("close", close(c));

    int c2 = accept_one(lfd), c3 = accept_one(lfd);
    send_byte(c2, 'a'); /* both accepted: the client may now replace connection 3 */
    SHOW_DATA("3: read after dup2 replaced its last fd", buf, read(c3, buf, sizeof buf));
    show_msgs(c2, 2);
    SHOW_DATA("2: read after the last copy closed", buf, read(c2, buf, sizeof buf));
}

static void client(const char *path) {
    char buf[16];
    int fd = connect_to(path);
    int a = dup(fd);
    say("dup -> %s", a >= 0 ? "new fd" : rcstr(a, errno));
    SHOW("dup2 to 50", dup2(fd, 50));
    SHOW("dup3 to 51 O_CLOEXEC", dup3(fd, 51, O_CLOEXEC));
    SHOW("fcntl F_DUPFD 60", fcntl(fd, F_DUPFD, 60));
    SHOW("fcntl F_DUPFD_CLOEXEC 70", fcntl(fd, F_DUPFD_CLOEXEC, 70));
    SHOW("dup2 to itself", dup2(51, 51));
    SHOW("dup3 to itself", dup3(51, 51, 0));
    SHOW("F_GETFD dup", fcntl(a, F_GETFD));
    SHOW("F_GETFD dup3 O_CLOEXEC", fcntl(51, F_GETFD));
    SHOW("F_GETFD F_DUPFD_CLOEXEC", fcntl(70, F_GETFD));
    msg(a, "via dup");
    msg(50, "via dup2");
    msg(51, "via dup3");
    msg(60, "via F_DUPFD");
    msg(70, "via F_DUPFD_CLOEXEC");
    msg(fd, "via the original");
    int order[6] = {a, 50, 51, 60, 70, fd};
    for (int i = 0; i < 6; i++) CHECK(read_full(order[i], buf + i, 1) == 1);
    say("one byte through each copy: %s", quoted(buf, 6));

    set_nonblock(50, 1);
    say("O_NONBLOCK set on one copy, seen on the original: %s", fcntl(fd, F_GETFL) & O_NONBLOCK ? "yes" : "no");
    SHOW("read original (empty)", read(fd, buf, sizeof buf));
    set_nonblock(a, 0);
    say("cleared on another copy, seen on the original: %s", fcntl(fd, F_GETFL) & O_NONBLOCK ? "yes" : "no");

    SHOW("close original", close(fd));
    msg(a, "after closing the original");
    SHOW("close dup", close(a));
    SHOW("close dup2", close(50));
    SHOW("close dup3", close(51));
    msg(60, "after closing four copies");
    SHOW("close F_DUPFD", close(60));
    msg(70, "through the last copy");
    SHOW("write to a closed copy", write(60, "x", 1));
    SHOW("close the last copy", close(70));

    int two = connect_to(path), three = connect_to(path);
    expect_byte(two, 'a');
    say("dup2 onto the last fd of connection 3 -> %s", dup2(two, three) == three ? "same fd" : rcstr(-1, errno));
    msg(three, "via the replaced fd");
    SHOW("close 2's original", close(two));
    msg(three, "still open");
    SHOW("close", close(three));
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    return run_role(argc, argv, server, client);
}
