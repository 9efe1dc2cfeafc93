/*
 * Sockets registered with epoll before they connect (as nginx registers its upstream
 * sockets): the registration must keep reporting the connection's data whatever happened to
 * it before the connect.
 *
 *   epoll_early server PATH / epoll_early client PATH
 *
 * The client makes 8 connections, each registered before its connect in its own way:
 *   0  ADD (EPOLLIN|EPOLLET)
 *   1  ADD (EPOLLIN), MOD to (EPOLLIN|EPOLLRDHUP)
 *   2  ADD, DEL, ADD again
 *   3  ADD to two instances; waited for in the second
 *   4  ADD (EPOLLIN|EPOLLONESHOT), re-armed with MOD between rounds
 *   5  ADD, dup, connected through the dup (the original stays open: a registration
 *      through an fd closed since stays with the kernel, and its connection plain)
 *   6  ADD to an instance closed before the connect; a new instance after it
 *   7  ADD, a connect to a missing path first (ENOENT), then the real one
 * Two rounds: for each connection in turn the client sends "go" and waits in epoll_wait(-1)
 * for the event of that connection, then reads the server's 3-byte answer. Then one byte
 * lets the server close, and every connection reads EOF.
 */
#include "conform.h"

#include <sys/epoll.h>

#define K 8

static void ctl(int ep, int op, int fd, unsigned events, uint64_t tag) {
    struct epoll_event ev = {.events = events, .data.u64 = tag};
    CHECK(epoll_ctl(ep, op, fd, op == EPOLL_CTL_DEL ? NULL : &ev) == 0);
}

/* Waits in `ep` until connection `tag` is reported; prints every event on the way. */
static void await(int ep, uint64_t tag, int round) {
    for (;;) {
        struct epoll_event ev[8];
        int n;
        do n = epoll_wait(ep, ev, 8, -1);
        while (n < 0 && errno == EINTR);
        CHECK(n >= 1);
        int seen = 0;
        for (int j = 0; j < n; j++) {
            say("round %d, connection %d: epoll_wait -> connection %d %s", round, (int)tag, (int)ev[j].data.u64,
                epollstr(ev[j].events));
            seen |= ev[j].data.u64 == tag;
        }
        if (seen) return;
    }
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int fd[K];
    for (int i = 0; i < K; i++) fd[i] = accept_one(lfd);
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < K; i++) {
            expect_str(fd[i], "go");
            char answer[4] = {'w', (char)('0' + i), (char)('0' + round), 0};
            write_str(fd[i], answer);
        }
    expect_byte(fd[0], 'e');
    for (int i = 0; i < K; i++) close(fd[i]);
    close(lfd);
}

static void client(const char *path) {
    socklen_t len;
    struct sockaddr_un a = address(path, &len);
    int ep1 = epoll_create1(0), ep2 = epoll_create1(0);
    CHECK(ep1 >= 0 && ep2 >= 0);
    int fd[K], wait_in[K];
    for (int i = 0; i < K; i++) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        CHECK(s >= 0);
        wait_in[i] = ep1;
        switch (i) {
        case 0: ctl(ep1, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLET, i); break;
        case 1:
            ctl(ep1, EPOLL_CTL_ADD, s, EPOLLIN, i);
            ctl(ep1, EPOLL_CTL_MOD, s, EPOLLIN | EPOLLRDHUP, i);
            break;
        case 2:
            ctl(ep1, EPOLL_CTL_ADD, s, EPOLLIN, i);
            ctl(ep1, EPOLL_CTL_DEL, s, 0, i);
            ctl(ep1, EPOLL_CTL_ADD, s, EPOLLIN, i);
            break;
        case 3:
            ctl(ep1, EPOLL_CTL_ADD, s, EPOLLIN, i);
            ctl(ep2, EPOLL_CTL_ADD, s, EPOLLIN, i);
            wait_in[i] = ep2;
            break;
        case 4: ctl(ep1, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLONESHOT, i); break;
        case 5: {
            ctl(ep1, EPOLL_CTL_ADD, s, EPOLLIN, i);
            int d = dup(s);
            CHECK(d >= 0);
            CHECK(connect(d, (struct sockaddr *)&a, len) == 0);
            break;
        }
        case 6: {
            int gone = epoll_create1(0);
            CHECK(gone >= 0);
            ctl(gone, EPOLL_CTL_ADD, s, EPOLLIN, i);
            close(gone);
            break;
        }
        case 7: {
            ctl(ep1, EPOLL_CTL_ADD, s, EPOLLIN, i);
            char missing[sizeof a.sun_path];
            snprintf(missing, sizeof missing, "%s.missing", path);
            socklen_t mlen;
            struct sockaddr_un m = address(missing, &mlen);
            int rc = connect(s, (struct sockaddr *)&m, mlen);
            say("connection 7: connect to a missing path -> %s", rcstr(rc, errno));
            break;
        }
        }
        if (i != 5) CHECK(connect(s, (struct sockaddr *)&a, len) == 0);
        if (i == 6) {
            int ep = epoll_create1(0);
            CHECK(ep >= 0);
            ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, i);
            wait_in[i] = ep;
        }
        warm_up(s, 0);
        fd[i] = s;
    }
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < K; i++) {
            if (i == 4 && round == 1) ctl(ep1, EPOLL_CTL_MOD, fd[i], EPOLLIN | EPOLLONESHOT, i);
            write_str(fd[i], "go");
            await(wait_in[i], i, round);
            char answer[4] = {0};
            CHECK(read_full(fd[i], answer, 3) == 3);
            say("round %d, connection %d: read %s", round, i, answer);
        }
    /* Only now may the server close (its hang-ups would race the last waits). */
    send_byte(fd[0], 'e');
    for (int i = 0; i < K; i++) {
        char b;
        say("connection %d: read at the end -> %s", i, rcstr(read(fd[i], &b, 1), errno));
        close(fd[i]);
    }
}

int main(int argc, char **argv) { return run_role(argc, argv, server, client); }
