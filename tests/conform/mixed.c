/*
 * Readiness of a socket mixed with a pipe and a timerfd in the same poll, select and epoll call.
 *
 *   mixed server PATH / mixed client PATH
 *
 * For each API the server checks: nothing ready (timeout 0); only the timer; only the pipe;
 * only the socket (the client answers each 'g' with one 'x'); then all three at once, each
 * first awaited on its own so that the combined call with timeout 0 has a fixed answer.
 */
#include "conform.h"

#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/timerfd.h>

static int sock, pipe_r, pipe_w, timer, ep;

static void arm_timer(void) {
    struct itimerspec its = {.it_value = {.tv_sec = 0, .tv_nsec = 1000000}};
    CHECK(timerfd_settime(timer, 0, &its, NULL) == 0);
}

static void drain(int which) {
    char buf[8];
    if (which & 1) CHECK(read(sock, buf, 1) == 1 && buf[0] == 'x');
    if (which & 2) CHECK(read(pipe_r, buf, 1) == 1);
    if (which & 4) CHECK(read(timer, buf, 8) == 8);
}

/* One call of `api` over the three fds; returns a bit set: 1 socket, 2 pipe, 4 timer. */
static int ready(const char *api, int timeout) {
    int got = 0, rc;
    if (!strcmp(api, "poll")) {
        struct pollfd p[3] = {{sock, POLLIN, 0}, {pipe_r, POLLIN, 0}, {timer, POLLIN, 0}};
        do rc = poll(p, 3, timeout);
        while (rc < 0 && errno == EINTR);
        CHECK(rc >= 0);
        for (int i = 0; i < 3; i++)
            if (p[i].revents) {
                CHECK(p[i].revents == POLLIN);
                got |= 1 << i;
            }
        CHECK(rc == __builtin_popcount(got));
    } else if (!strcmp(api, "select")) {
        fd_set rd;
        int fds[3] = {sock, pipe_r, timer}, maxfd = 0;
        FD_ZERO(&rd);
        for (int i = 0; i < 3; i++) {
            FD_SET(fds[i], &rd);
            if (fds[i] > maxfd) maxfd = fds[i];
        }
        struct timeval tv = {0, 0};
        do rc = select(maxfd + 1, &rd, NULL, NULL, timeout < 0 ? NULL : &tv);
        while (rc < 0 && errno == EINTR);
        CHECK(rc >= 0);
        for (int i = 0; i < 3; i++)
            if (FD_ISSET(fds[i], &rd)) got |= 1 << i;
        CHECK(rc == __builtin_popcount(got));
    } else {
        struct epoll_event ev[4];
        do rc = epoll_wait(ep, ev, 4, timeout);
        while (rc < 0 && errno == EINTR);
        CHECK(rc >= 0);
        for (int i = 0; i < rc; i++) {
            CHECK(ev[i].events == EPOLLIN);
            got |= ev[i].data.u32;
        }
    }
    return got;
}

static const char *names(int set) {
    static char buf[64];
    buf[0] = 0;
    if (set & 1) strcat(buf, " socket");
    if (set & 2) strcat(buf, " pipe");
    if (set & 4) strcat(buf, " timer");
    return set ? buf + 1 : "nothing";
}

static void round_of(const char *api) {
    say("-- %s", api);
    say("%s(0) idle -> %s", api, names(ready(api, 0)));
    arm_timer();
    int got = ready(api, -1);
    say("%s(-1) timer armed -> %s", api, names(got));
    drain(got);
    CHECK(write(pipe_w, "p", 1) == 1);
    got = ready(api, -1);
    say("%s(-1) pipe written -> %s", api, names(got));
    drain(got);
    send_byte(sock, 'g');
    got = ready(api, -1);
    say("%s(-1) socket data -> %s", api, names(got));
    drain(got);
    arm_timer();
    CHECK(write(pipe_w, "p", 1) == 1);
    send_byte(sock, 'g');
    wait_ready(timer, POLLIN);
    wait_ready(pipe_r, POLLIN);
    wait_ready(sock, POLLIN);
    got = ready(api, 0);
    say("%s(0) all three -> %s", api, names(got));
    drain(got);
    say("%s(0) drained -> %s", api, names(ready(api, 0)));
}

static void server(const char *path) {
    int lfd = listen_on(path);
    sock = accept_one(lfd);
    int p[2];
    CHECK(pipe(p) == 0);
    pipe_r = p[0];
    pipe_w = p[1];
    timer = timerfd_create(CLOCK_MONOTONIC, 0);
    CHECK(timer >= 0);
    ep = epoll_create1(0);
    CHECK(ep >= 0);
    int fds[3] = {sock, pipe_r, timer};
    for (int i = 0; i < 3; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 1u << i};
        CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) == 0);
    }
    round_of("poll");
    round_of("select");
    round_of("epoll");
}

static void client(const char *path) {
    int fd = connect_to(path);
    int answered = 0;
    for (;;) {
        char cmd;
        ssize_t r = read(fd, &cmd, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) break;
        CHECK(r == 1 && cmd == 'g');
        send_byte(fd, 'x');
        answered++;
    }
    say("answered %d, then read -> 0 EOF", answered);
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
