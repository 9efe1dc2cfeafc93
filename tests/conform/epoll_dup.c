/*
 * One epoll instance under several fd numbers: a socket registered through a duplicate of the
 * epoll fd (as mio, tokio's I/O driver, does with F_DUPFD_CLOEXEC) and waited on through the
 * original, through the duplicate, through a number dup2 put the instance on (replacing another
 * instance), and through the duplicate after the original is closed. Every wait must report
 * the application's own data, never the hook's registration.
 *
 *   epoll_dup server PATH / epoll_dup client PATH
 *
 * The client sends the next word of its list each time the server sends it a 'g' (as in
 * epoll_sets); the server waits with timeout -1 for each, so every answer is fixed.
 */
#include "conform.h"

#include <fcntl.h>
#include <sys/epoll.h>

/* epoll_wait(-1) on `ep`, then the events and the data of the one event. */
static void wait_say(const char *what, int ep) {
    struct epoll_event ev[4];
    int n;
    do n = epoll_wait(ep, ev, 4, -1);
    while (n < 0 && errno == EINTR);
    if (n < 0) say("%s -> %s", what, rcstr(n, errno));
    else say("%s -> %d %s data %llx", what, n, epollstr(ev[0].events), (unsigned long long)ev[0].data.u64);
}

/* Asks for the next word, waits for it on `ep`, reads it. */
static void round_on(int c, int ep, const char *what) {
    char buf[64];
    send_byte(c, 'g');
    wait_say(what, ep);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);

    say("-- registered through a duplicate, waited on the original");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0);
    int reg = fcntl(ep, F_DUPFD_CLOEXEC, 0);
    CHECK(reg >= 0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u64 = 0x5eed0001};
    SHOW("epoll_ctl ADD through the duplicate", epoll_ctl(reg, EPOLL_CTL_ADD, c, &ev));
    for (int k = 0; k < 6; k++) round_on(c, ep, "epoll_wait(original)");

    say("-- waited on the duplicate");
    for (int k = 0; k < 2; k++) round_on(c, reg, "epoll_wait(duplicate)");

    say("-- dup2 puts the instance on another instance's number");
    int other = epoll_create1(0);
    CHECK(other >= 0);
    SHOW("dup2 onto the other instance", dup2(ep, other) == other ? 0 : -1);
    for (int k = 0; k < 2; k++) round_on(c, other, "epoll_wait(dup2 copy)");
    ev.data.u64 = 0x5eed0002;
    SHOW("epoll_ctl MOD through the dup2 copy", epoll_ctl(other, EPOLL_CTL_MOD, c, &ev));
    round_on(c, ep, "epoll_wait(original) after MOD");

    say("-- the original closed, the duplicates keep the instance");
    SHOW("close original", close(ep));
    round_on(c, reg, "epoll_wait(duplicate)");
    round_on(c, other, "epoll_wait(dup2 copy)");
    SHOW("close dup2 copy", close(other));
    round_on(c, reg, "epoll_wait(last number)");
    SHOW("epoll_ctl DEL", epoll_ctl(reg, EPOLL_CTL_DEL, c, NULL));
    SHOW("close last number", close(reg));
    SHOW("close", close(c));
}

static void client(const char *path) {
    static const char *words[] = {"one", "two", "three", "four", "five", "six", "seven",
                                  "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen"};
    int fd = connect_to(path);
    send_words_on_cue(fd, words, sizeof words / sizeof words[0]);
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
