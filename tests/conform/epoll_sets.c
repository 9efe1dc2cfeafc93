/*
 * epoll beyond the echo loop: EPOLLONESHOT re-armed with EPOLL_CTL_MOD, DEL and ADD again (the
 * errors and readiness in between), and one socket in two epoll sets at once (level-triggered in one, edge-triggered in the other), then closed.
 *
 *   epoll_sets server PATH / epoll_sets client PATH
 *
 * The client sends the next word of its list each time the server sends it a 'g'. The server
 * closes with the last word unread, so the client's read gets ECONNRESET, then EOF. The server checks readiness with timeout 0 only after poll(-1) has shown that
 * the word arrived, so every answer is fixed.
 */
#include "conform.h"

#include <sys/epoll.h>

static void add(int ep, int fd, unsigned events, int op) {
    struct epoll_event ev = {.events = events, .data.fd = fd};
    CHECK(epoll_ctl(ep, op, fd, &ev) == 0);
}

/* Asks the client for its next word and waits (poll -1) until it arrived. */
static void next_word(int c) {
    send_byte(c, 'g');
    wait_ready(c, POLLIN);
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    char buf[64];

    say("-- EPOLLONESHOT");
    int ep = epoll_create1(0);
    CHECK(ep >= 0);
    add(ep, c, EPOLLIN | EPOLLONESHOT, EPOLL_CTL_ADD);
    epoll_say("epoll_wait(0) empty", ep, 0);
    send_byte(c, 'g');
    epoll_say("epoll_wait(-1) after word", ep, -1);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    next_word(c);
    epoll_say("epoll_wait(0) disarmed, data waiting", ep, 0);
    SHOW("epoll_ctl MOD re-arm", ({
             struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.fd = c};
             epoll_ctl(ep, EPOLL_CTL_MOD, c, &ev);
         }));
    epoll_say("epoll_wait(0) re-armed", ep, 0);
    epoll_say("epoll_wait(0) fired once", ep, 0);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    SHOW("epoll_ctl ADD again", ({
             struct epoll_event ev = {.events = EPOLLIN, .data.fd = c};
             epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
         }));
    SHOW("epoll_ctl DEL", epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL));
    SHOW("epoll_ctl DEL again", epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL));

    say("-- DEL and ADD again, as event loops churn write interest");
    next_word(c);
    epoll_say("epoll_wait(0) deleted, data waiting", ep, 0);
    SHOW("epoll_ctl MOD deleted", ({
             struct epoll_event ev = {.events = EPOLLIN, .data.fd = c};
             epoll_ctl(ep, EPOLL_CTL_MOD, c, &ev);
         }));
    for (int k = 0; k < 100; k++) {
        add(ep, c, EPOLLIN | EPOLLOUT, EPOLL_CTL_ADD);
        struct epoll_event ev[2];
        CHECK(epoll_wait(ep, ev, 2, 0) == 1 && ev[0].events == (EPOLLIN | EPOLLOUT));
        CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL) == 0);
        CHECK(epoll_wait(ep, ev, 2, 0) == 0);
    }
    say("100 rounds of ADD, wait, DEL, wait");
    add(ep, c, EPOLLOUT, EPOLL_CTL_ADD);
    epoll_say("epoll_wait(0) EPOLLOUT only", ep, 0);
    add(ep, c, EPOLLIN | EPOLLET, EPOLL_CTL_MOD);
    epoll_say("epoll_wait(0) MOD to EPOLLIN|EPOLLET", ep, 0);
    epoll_say("epoll_wait(0) edge seen", ep, 0);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    SHOW("epoll_ctl DEL", epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL));
    next_word(c);
    epoll_say("epoll_wait(0) deleted, new data", ep, 0);
    add(ep, c, EPOLLIN, EPOLL_CTL_ADD);
    epoll_say("epoll_wait(-1) added back", ep, -1);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    SHOW("epoll_ctl DEL", epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL));

    say("-- two epoll sets: level-triggered and edge-triggered");
    int lt = epoll_create1(0), et = epoll_create1(0);
    CHECK(lt >= 0 && et >= 0);
    add(lt, c, EPOLLIN, EPOLL_CTL_ADD);
    add(et, c, EPOLLIN | EPOLLET, EPOLL_CTL_ADD);
    epoll_say("lt(0) empty", lt, 0);
    epoll_say("et(0) empty", et, 0);
    next_word(c);
    epoll_say("lt(0)", lt, 0);
    epoll_say("et(0)", et, 0);
    epoll_say("lt(0) again", lt, 0);
    epoll_say("et(0) again", et, 0);
    SHOW_DATA("read 2", buf, read(c, buf, 2));
    epoll_say("lt(0) after partial read", lt, 0);
    epoll_say("et(0) after partial read", et, 0);
    SHOW_DATA("read rest", buf, read(c, buf, sizeof buf));
    epoll_say("lt(0) drained", lt, 0);
    epoll_say("et(0) drained", et, 0);
    next_word(c);
    epoll_say("et(-1) new data", et, -1);
    epoll_say("lt(-1) new data", lt, -1);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));

    say("-- EPOLLOUT edge-triggered");
    int out = epoll_create1(0);
    CHECK(out >= 0);
    add(out, c, EPOLLOUT | EPOLLET, EPOLL_CTL_ADD);
    epoll_say("et EPOLLOUT(0)", out, 0);
    epoll_say("et EPOLLOUT(0) again", out, 0);

    say("-- close removes the socket from every set");
    next_word(c);
    SHOW("close", close(c));
    epoll_say("lt(0) after close", lt, 0);
    epoll_say("et(0) after close", et, 0);
    epoll_say("oneshot set(0) after close", ep, 0);
    epoll_say("out(0) after close", out, 0);
    SHOW("epoll_ctl ADD closed fd", ({
             struct epoll_event ev = {.events = EPOLLIN, .data.fd = c};
             epoll_ctl(lt, EPOLL_CTL_ADD, c, &ev);
         }));
}

static void client(const char *path) {
    static const char *words[] = {"one", "two", "three", "four", "five", "six", "seven"};
    int fd = connect_to(path);
    send_words_on_cue(fd, words, sizeof words / sizeof words[0]);
    char last;
    SHOW_DATA("read again", &last, read(fd, &last, 1));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
