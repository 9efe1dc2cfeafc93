/*
 * epoll registrations made while the connection is plain, then the connection moves (hooked
 * runs: to the rings) while edges are in every state: edge-triggered ones the kernel already
 * reported stay reported (no second EPOLLIN for data that waits unread, no second EPOLLOUT),
 * one it has not reported yet comes once, a level-triggered one keeps coming. Then new data
 * and room make new edges.
 *
 *   epoll_move server PATH / epoll_move client PATH
 *
 * The server waits for the client's words in epoll (an epoll wait does not move a connection
 * that is still plain, a poll of it may), so the connection moves during the looks of
 * `let_it_move`, after the edges were taken. (At most four instances: a connection registered
 * in more stays plain.) Those looks only print
 * whether every one of them was quiet: the transcript is the same however many there were.
 * The client waits for each 'g' with poll() of 1 ms, so that its end takes part in the move.
 */
#include "conform.h"

#include <sys/epoll.h>

/* epoll_wait(0) without a line: how many events. */
static int quiet_look(int ep) {
    struct epoll_event ev[4];
    int n;
    do n = epoll_wait(ep, ev, 4, 0);
    while (n < 0 && errno == EINTR);
    CHECK(n >= 0);
    return n;
}

static void add(int ep, int fd, unsigned events) {
    struct epoll_event ev = {.events = events, .data.fd = fd};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0);
}

/*
 * Looks at the socket (poll, no wait: a call that moves a connection one step) and checks that
 * the edge-triggered instances `quiet` stay quiet, every millisecond, until a shared-memory
 * segment appeared in this process and 50 more looks passed (at most 400 looks: a plain run
 * has no segment). Returns whether every look at every instance found nothing.
 */
static int let_it_move(int c, const int *quiet, int n) {
    struct segments before;
    segments_now(&before);
    int all_quiet = 1, after = -1;
    for (int look = 0; look < 400 && after < 50; look++) {
        struct pollfd p = {c, POLLIN, 0};
        CHECK(poll(&p, 1, 0) == 1);
        for (int k = 0; k < n; k++) all_quiet &= quiet_look(quiet[k]) == 0;
        if (after >= 0) after++;
        else if (new_segment(&before)) after = 0;
        usleep(1000);
    }
    return all_quiet;
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    char buf[64];

    /* (`et` first: the kernel wakes the instances of a socket in the reverse order of their
     * registrations, so when et(-1) returns, the others have seen the word too.) */
    int et = epoll_create1(0), lt = epoll_create1(0), out = epoll_create1(0), late = epoll_create1(0);
    CHECK(lt >= 0 && et >= 0 && out >= 0 && late >= 0);
    add(et, c, EPOLLIN | EPOLLET);
    add(lt, c, EPOLLIN);
    add(out, c, EPOLLOUT | EPOLLET);
    add(late, c, EPOLLIN | EPOLLOUT | EPOLLET);

    say("-- edges taken, the first word unread");
    send_byte(c, 'g');
    epoll_say("et(-1) the first word", et, -1);
    epoll_say("out(0)", out, 0);
    epoll_say("lt(0)", lt, 0);
    epoll_say("et(0) again", et, 0);
    epoll_say("out(0) again", out, 0);

    say("-- the connection may move");
    int quiet[] = {et, out};
    say("et(0) and out(0) quiet in every look: %s", let_it_move(c, quiet, 2) ? "yes" : "no");
    epoll_say("et(0) after", et, 0);
    epoll_say("out(0) after", out, 0);
    epoll_say("lt(0) after", lt, 0);
    epoll_say("late(0): its first edge, not taken before", late, 0);
    epoll_say("late(0) again", late, 0);

    say("-- a new word: new edges");
    send_byte(c, 'g');
    epoll_say("et(-1) the second word", et, -1);
    epoll_say("et(0) again", et, 0);
    epoll_say("late(0)", late, 0);
    epoll_say("late(0) again", late, 0);
    epoll_say("out(0): the client took the 'g'", out, 0);
    epoll_say("out(0) again", out, 0);
    SHOW_DATA("read both words", buf, read_full(c, buf, 6));
    epoll_say("et(0) drained", et, 0);
    epoll_say("lt(0) drained", lt, 0);

    say("-- EOF is an edge");
    send_byte(c, 'q');
    epoll_say("et(-1) EOF", et, -1);
    epoll_say("et(0) again", et, 0);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    SHOW("close", close(c));
}

static void client(const char *path) {
    static const char *words[] = {"one", "two"};
    int fd = connect_to(path);
    size_t next = 0;
    for (;;) {
        /* The first 'g' with a blocking read (the connection does not move before the server
         * took its edges); then a poll every millisecond (each one a step of the move). */
        if (next > 0) {
            struct pollfd p = {fd, POLLIN, 0};
            int r = poll(&p, 1, 1);
            if (r == 0 || (r < 0 && errno == EINTR)) continue;
            CHECK(r == 1);
        }
        char cmd;
        ssize_t r = read(fd, &cmd, 1);
        if (r < 0 && errno == EINTR) continue;
        CHECK(r == 1);
        if (cmd == 'q') break;
        CHECK(cmd == 'g' && next < sizeof words / sizeof words[0]);
        write_str(fd, words[next]);
        say("sent %s", words[next++]);
    }
    SHOW("shutdown(SHUT_WR)", shutdown(fd, SHUT_WR));
    char last;
    SHOW_DATA("read", &last, read(fd, &last, 1));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
