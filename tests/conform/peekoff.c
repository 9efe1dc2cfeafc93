/*
 * SO_PEEK_OFF on a stream socket: MSG_PEEK reads at the offset and moves it forward, normal
 * reads move it back (not below 0), -1 turns it off, negative values and a short option length;
 * a non-blocking peek past the data (EAGAIN), a blocking one that waits for more, and EOF
 * before the offset.
 *
 *   peekoff server PATH / peekoff client PATH
 *
 * The server waits (FIONREAD) until every byte the client sent is there before it peeks, so
 * counts are fixed.
 */
#include "conform.h"

#include <sys/ioctl.h>

static void set_off(int fd, int v) {
    char what[64];
    snprintf(what, sizeof what, "setsockopt SO_PEEK_OFF %d", v);
    SHOW(what, setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &v, sizeof v));
}

static void get_off(int fd) {
    int v = -7;
    socklen_t len = sizeof v;
    int rc = getsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &v, &len);
    if (rc < 0) say("getsockopt SO_PEEK_OFF -> %s", rcstr(rc, errno));
    else say("getsockopt SO_PEEK_OFF -> %d (len %u)", v, (unsigned)len);
}

static void wait_queued(int fd, int n) {
    for (int rounds = 0;; rounds++) {
        int q = -1;
        CHECK(ioctl(fd, FIONREAD, &q) == 0);
        if (q >= n) return;
        CHECK(rounds < 10000);
        usleep(1000);
    }
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int fd = accept_one(lfd);
    char buf[64];
    get_off(fd);
    wait_queued(fd, 10);
    set_off(fd, 0);
    get_off(fd);
    SHOW_DATA("recv 3 MSG_PEEK", buf, recv(fd, buf, 3, MSG_PEEK));
    SHOW_DATA("recv 3 MSG_PEEK", buf, recv(fd, buf, 3, MSG_PEEK));
    get_off(fd);
    SHOW_DATA("read 2", buf, read(fd, buf, 2));
    get_off(fd);
    SHOW_DATA("recv 64 MSG_PEEK", buf, recv(fd, buf, 64, MSG_PEEK));
    get_off(fd);
    SHOW_DATA("recv 64 MSG_PEEK|MSG_DONTWAIT past the data", buf, recv(fd, buf, 64, MSG_PEEK | MSG_DONTWAIT));
    set_off(fd, 2);
    SHOW_DATA("recv 3 MSG_PEEK", buf, recv(fd, buf, 3, MSG_PEEK));
    set_off(fd, -1);
    SHOW_DATA("recv 3 MSG_PEEK (offset off)", buf, recv(fd, buf, 3, MSG_PEEK));
    get_off(fd);
    set_off(fd, 100);
    SHOW_DATA("read 64", buf, read(fd, buf, 64));
    get_off(fd);
    set_off(fd, -5);
    get_off(fd);
    int three = 3;
    SHOW("setsockopt SO_PEEK_OFF with a 2-byte length", setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &three, 2));
    get_off(fd);

    /* A blocking peek past the data waits for the client's next byte. */
    send_byte(fd, 'g');
    wait_queued(fd, 2);
    set_off(fd, 2);
    send_byte(fd, 'z');
    SHOW_DATA("recv 10 MSG_PEEK, blocking, past the data", buf, recv(fd, buf, 10, MSG_PEEK));
    get_off(fd);

    SHOW_DATA("read 10", buf, read(fd, buf, 10));
    get_off(fd);

    /* EOF before the offset: the client sends 4 bytes and shuts its side down. */
    send_byte(fd, 'e');
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    do CHECK(poll(&p, 1, -1) == 1);
    while (!(p.revents & POLLRDHUP));
    set_off(fd, 5);
    SHOW_DATA("recv 10 MSG_PEEK at EOF before the offset", buf, recv(fd, buf, 10, MSG_PEEK));
    set_off(fd, 1);
    SHOW_DATA("recv 10 MSG_PEEK", buf, recv(fd, buf, 10, MSG_PEEK));
    SHOW_DATA("read 10", buf, read(fd, buf, 10));
    get_off(fd);
    SHOW_DATA("read at EOF", buf, read(fd, buf, 10));
    SHOW("close", close(fd));
}

static void client(const char *path) {
    int fd = connect_to(path);
    SHOW("send abcdefghij", send(fd, "abcdefghij", 10, 0));
    expect_byte(fd, 'g');
    SHOW("send xy", send(fd, "xy", 2, 0));
    expect_byte(fd, 'z');
    usleep(50000);
    SHOW("send z", send(fd, "z", 1, 0));
    expect_byte(fd, 'e');
    SHOW("send pqrs", send(fd, "pqrs", 4, 0));
    SHOW("shutdown SHUT_WR", shutdown(fd, SHUT_WR));
    char b;
    SHOW("read at EOF", read(fd, &b, 1));
    SHOW("close", close(fd));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
