/*
 * shutdown(2) by one thread while another thread of the same process sleeps on the socket.
 *
 *   localshut server PATH / localshut client PATH
 *
 * The kernel's shutdown wakes every waiter of the socket it shuts: MariaDB's KILL does
 * shutdown(SHUT_RDWR) on the victim's socket while the victim's thread sleeps in poll() on it
 * (POLLIN|POLLPRI, wait_timeout), and relies on that wake-up to end the session. Each part has
 * a server thread accept a connection (so that it is the connection's only user, as MariaDB's
 * session thread is) and sleep on it while the peer stays silent; the main thread then shuts
 * the connection down for both directions (after 200 ms, so that the sleeper is asleep; the
 * transcript is the same if it is not yet):
 *   A. poll(POLLIN|POLLPRI): POLLIN|POLLHUP;
 *   B. a blocking read (SO_RCVTIMEO 3 s): EOF;
 *   C. epoll_wait (EPOLLIN|EPOLLRDHUP): EPOLLIN|EPOLLRDHUP|EPOLLHUP;
 * each woken by the shutdown, not after its 3 s timeout (with which a poll left asleep also
 * reports the flags: the transcript says whether it woke within 2 s).
 * The client then reads EOF and its send fails with EPIPE.
 */
#include "conform.h"

#include <pthread.h>
#include <sys/time.h>
#include <time.h>

enum how { POLL, READ, EPOLL };

struct sleeper {
    int lfd;
    int fd;
    pthread_barrier_t accepted;
    enum how how;
    char saw[256]; /* what the sleeper saw, printed once it is joined (a fixed order) */
};

static void *sleep_on(void *arg) {
    struct sleeper *s = arg;
    char buf[16];
    /* Accepted (and warmed up) here: the sleeper is the connection's only user. */
    s->fd = accept_one(s->lfd);
    if (s->how == READ) {
        struct timeval tv = {.tv_sec = 3};
        CHECK(setsockopt(s->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    }
    pthread_barrier_wait(&s->accepted);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    switch (s->how) {
    case POLL: {
        struct pollfd p = {.fd = s->fd, .events = POLLIN | POLLPRI};
        int n = poll(&p, 1, 3000);
        snprintf(s->saw, sizeof s->saw, "sleeping poll -> %d %s", n, n > 0 ? pollstr(p.revents) : "");
        break;
    }
    case READ: {
        ssize_t n = read(s->fd, buf, sizeof buf);
        int e = errno;
        snprintf(s->saw, sizeof s->saw, "sleeping read -> %zd %s", n, n == 0 ? "EOF" : n < 0 ? errname(e) : "data");
        break;
    }
    case EPOLL: {
        int ep = epoll_create1(EPOLL_CLOEXEC);
        CHECK(ep >= 0);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = 7};
        CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) == 0);
        struct epoll_event got[4];
        int n;
        do n = epoll_wait(ep, got, 4, 3000);
        while (n < 0 && errno == EINTR);
        int e = errno;
        snprintf(s->saw, sizeof s->saw, "sleeping epoll_wait -> %d %s", n, n > 0 ? epollstr(got[0].events) : n < 0 ? errname(e) : "");
        close(ep);
        break;
    }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    /* The shutdown comes after 200 ms; a sleeper it did not wake ends at its 3 s timeout. */
    double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    size_t at = strlen(s->saw);
    snprintf(s->saw + at, sizeof s->saw - at, ", woken by the shutdown: %s", took < 2.0 ? "yes" : "no");
    return NULL;
}

static void part(int lfd, int ctl, enum how how, char step) {
    struct sleeper s = {.lfd = lfd, .how = how};
    CHECK(pthread_barrier_init(&s.accepted, NULL, 2) == 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, sleep_on, &s) == 0);
    pthread_barrier_wait(&s.accepted);
    int c = s.fd;
    usleep(200 * 1000);
    SHOW("shutdown SHUT_RDWR", shutdown(c, SHUT_RDWR));
    CHECK(pthread_join(t, NULL) == 0);
    say("%s", s.saw);
    pthread_barrier_destroy(&s.accepted);
    send_byte(ctl, step);
    expect_byte(ctl, step);
    SHOW("close", close(c));
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int ctl = accept_one(lfd);
    say("-- A: poll");
    part(lfd, ctl, POLL, 'a');
    say("-- B: blocking read");
    part(lfd, ctl, READ, 'b');
    say("-- C: epoll_wait");
    part(lfd, ctl, EPOLL, 'c');
}

static void client(const char *path) {
    int ctl = connect_to(path);
    char buf[16];
    for (char step = 'a'; step <= 'c'; step++) {
        int c = connect_to(path);
        expect_byte(ctl, step);
        SHOW_DATA("read", buf, read(c, buf, sizeof buf));
        SHOW("send MSG_NOSIGNAL", send(c, "x", 1, MSG_NOSIGNAL));
        SHOW("close", close(c));
        send_byte(ctl, step);
    }
    SHOW("close ctl", close(ctl));
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    return run_role(argc, argv, server, client);
}
