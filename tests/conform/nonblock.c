/*
 * Non-blocking mode: EAGAIN on an empty socket (accept4 SOCK_NONBLOCK, fcntl O_NONBLOCK,
 * MSG_DONTWAIT), filling until EAGAIN, POLLOUT (and an edge-triggered EPOLLOUT) after the peer
 * drains, a partial large write, SO_RCVTIMEO.
 *
 *   nonblock server PATH / nonblock client PATH
 *
 * The client opens two connections: `data` (tested) and `ctl`, on which the ends tell each
 * other how many bytes to expect and when a step is done, since `data` is full at those times.
 * No line depends on the socket's buffer size: only "filled until EAGAIN: yes" is printed.
 */
#include "conform.h"

#include <sys/epoll.h>
#include <sys/ioctl.h>

#define BIG (4u << 20) /* larger than any socket buffer or ring */

static void send_u64(int fd, uint64_t v) { write_full(fd, &v, sizeof v); }

static uint64_t recv_u64(int fd) {
    uint64_t v;
    CHECK(read_full(fd, &v, sizeof v) == sizeof v);
    return v;
}

/* Reads exactly n bytes of the pattern from a blocking fd, from *pos on; yields whether they matched. */
static int drain_check(int fd, uint64_t *pos, uint64_t n) {
    static char buf[65536];
    int ok = 1;
    while (n > 0) {
        size_t want = n < sizeof buf ? (size_t)n : sizeof buf;
        size_t got = read_full(fd, buf, want);
        CHECK(got == want);
        ok &= pat_check(buf, *pos, got);
        *pos += got;
        n -= got;
    }
    return ok;
}

static int ewait(int ep) {
    struct epoll_event ev;
    int n;
    do n = epoll_wait(ep, &ev, 1, 0);
    while (n < 0 && errno == EINTR);
    CHECK(n >= 0);
    return n ? (int)ev.events : 0;
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int data = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
    CHECK(data >= 0);
    warm_up(data, 1);
    int ctl = accept_one(lfd);
    char buf[16];
    say("O_NONBLOCK after accept4(SOCK_NONBLOCK): %s", fcntl(data, F_GETFL) & O_NONBLOCK ? "yes" : "no");
    SHOW("read empty", read(data, buf, sizeof buf));
    SHOW("recv empty", recv(data, buf, sizeof buf, 0));
    set_nonblock(data, 0);
    say("O_NONBLOCK after F_SETFL: %s", fcntl(data, F_GETFL) & O_NONBLOCK ? "yes" : "no");
    SHOW("recv MSG_DONTWAIT empty", recv(data, buf, sizeof buf, MSG_DONTWAIT));
    SHOW("recv MSG_PEEK|MSG_DONTWAIT empty", recv(data, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT));
    int avail = -1;
    SHOW("ioctl FIONREAD", ioctl(data, FIONREAD, &avail));
    say("FIONREAD -> %d", avail);
    send_byte(ctl, 'g');

    uint64_t pos = 0;
    uint64_t filled = recv_u64(ctl);
    say("drained the filled bytes, content ok: %s", drain_check(data, &pos, filled) ? "yes" : "no");
    SHOW("recv MSG_DONTWAIT drained", recv(data, buf, sizeof buf, MSG_DONTWAIT));
    send_byte(ctl, 'd');
    uint64_t partial = recv_u64(ctl);
    say("read the partial write, content ok: %s", drain_check(data, &pos, partial) ? "yes" : "no");
    set_nonblock(data, 1);
    SHOW("read empty again", read(data, buf, sizeof buf));
    set_nonblock(data, 0);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 50000};
    CHECK(setsockopt(data, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    SHOW("read with SO_RCVTIMEO 50 ms", read(data, buf, sizeof buf));
    tv.tv_usec = 0;
    CHECK(setsockopt(data, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    send_byte(ctl, 'e');
    SHOW_DATA("read after the client closed", buf, read(data, buf, sizeof buf));
    SHOW_DATA("ctl read", buf, read(ctl, buf, sizeof buf));
}

static void client(const char *path) {
    int data = connect_to(path);
    int ctl = connect_to(path);
    char buf[16];
    set_nonblock(data, 1);
    say("O_NONBLOCK after F_SETFL: %s", fcntl(data, F_GETFL) & O_NONBLOCK ? "yes" : "no");
    SHOW("read empty", read(data, buf, sizeof buf));
    SHOW("recvfrom empty", recvfrom(data, buf, sizeof buf, 0, NULL, NULL));
    poll_one("poll POLLIN|POLLOUT idle", data, POLLIN | POLLOUT, 0);
    int ep = epoll_create1(0);
    CHECK(ep >= 0);
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLET, .data.fd = data};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, data, &ev) == 0);
    say("epoll ET EPOLLOUT -> 0x%x", ewait(ep));
    say("epoll ET EPOLLOUT again -> 0x%x", ewait(ep));
    expect_byte(ctl, 'g');

    /* Fill until EAGAIN with 4 KiB writes (partial writes continue the loop). */
    static char chunk[4096];
    uint64_t filled = 0;
    for (;;) {
        pat_fill(chunk, filled, sizeof chunk);
        ssize_t w = write(data, chunk, sizeof chunk);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
            CHECK(errno == EAGAIN);
            break;
        }
        filled += (uint64_t)w;
    }
    say("filled until EAGAIN: yes");
    poll_one("poll POLLOUT full", data, POLLOUT, 0);
    say("epoll ET EPOLLOUT full -> 0x%x", ewait(ep));
    SHOW("write 1 full", write(data, "z", 1));
    SHOW("send MSG_DONTWAIT full", send(data, "z", 1, MSG_DONTWAIT));
    send_u64(ctl, filled);
    poll_one("poll(-1) POLLOUT while the peer drains", data, POLLOUT, -1);
    expect_byte(ctl, 'd');
    poll_one("poll POLLOUT drained", data, POLLOUT, 0);
    say("epoll ET EPOLLOUT after drain -> 0x%x", ewait(ep));

    char *big = malloc(BIG);
    CHECK(big);
    pat_fill(big, filled, BIG);
    errno = 0;
    ssize_t w = write(data, big, BIG);
    say("large write partial: %s", w > 0 && w < (ssize_t)BIG ? "yes" : rcstr(w, errno));
    SHOW("write after the partial write", write(data, big + w, BIG - (size_t)w));
    say("epoll ET EPOLLOUT full again -> 0x%x", ewait(ep));
    send_u64(ctl, (uint64_t)w);
    expect_byte(ctl, 'e');
    SHOW("close data", close(data));
    SHOW("close ctl", close(ctl));
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    return run_role(argc, argv, server, client);
}
