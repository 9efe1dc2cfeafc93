/*
 * shutdown(2) and the readiness around it.
 *
 *   shutdown server PATH / shutdown client PATH
 *
 * The client opens `ctl` first (sync bytes both ways), then one connection per part:
 *   A. SHUT_WR with 100 000 bytes still in flight: the peer reads them all, then EOF (again
 *      and again), POLLIN|POLLRDHUP; the shut end gets EPIPE but still reads the reply.
 *   B. SHUT_RD with one byte queued: the byte is still read, then EOF; the peer's send gets
 *      EPIPE; the other direction keeps working; POLLHUP once the peer closed too.
 *   C. SHUT_RDWR: queued data still readable, then EOF and EPIPE on both ends.
 * SIGPIPE is ignored here (see the sigpipe scenario).
 */
#include "conform.h"

#define BULK 100000

static const short ALL = POLLIN | POLLOUT | POLLRDHUP;

static void server(const char *path) {
    int lfd = listen_on(path);
    int ctl = accept_one(lfd);
    char buf[8192];

    say("-- A: peer SHUT_WR with data in flight");
    int a = accept_one(lfd);
    uint64_t got = 0;
    int ok = 1;
    for (;;) {
        ssize_t r = read(a, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        CHECK(r >= 0);
        if (r == 0) break;
        ok &= pat_check(buf, got, (size_t)r);
        got += (uint64_t)r;
    }
    say("read %llu bytes then EOF, content ok: %s", (unsigned long long)got, ok ? "yes" : "no");
    SHOW_DATA("read again", buf, read(a, buf, sizeof buf));
    poll_one("poll", a, ALL, 0);
    SHOW("write reply", write(a, "reply", 5));
    expect_byte(ctl, '1');
    SHOW("close", close(a));

    say("-- B: SHUT_RD with a byte queued");
    int b = accept_one(lfd);
    expect_byte(ctl, '2');
    SHOW("shutdown SHUT_RD", shutdown(b, SHUT_RD));
    poll_one("poll", b, ALL, 0);
    SHOW_DATA("read", buf, read(b, buf, sizeof buf));
    SHOW_DATA("read", buf, read(b, buf, sizeof buf));
    send_byte(ctl, '3');
    expect_byte(ctl, '4');
    SHOW("write back", write(b, "back", 4));
    expect_byte(ctl, '5');
    poll_one("poll after peer close", b, ALL, 0);
    SHOW("send MSG_NOSIGNAL after peer close", send(b, "q", 1, MSG_NOSIGNAL));
    SHOW("close", close(b));

    say("-- C: SHUT_RDWR with data queued");
    int c = accept_one(lfd);
    expect_byte(ctl, '6');
    SHOW("shutdown SHUT_RDWR", shutdown(c, SHUT_RDWR));
    poll_one("poll", c, ALL, 0);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    SHOW("send MSG_NOSIGNAL", send(c, "q", 1, MSG_NOSIGNAL));
    SHOW("write", write(c, "q", 1));
    SHOW("shutdown SHUT_WR again", shutdown(c, SHUT_WR));
    send_byte(ctl, '7');
    expect_byte(ctl, '8');
    SHOW("close", close(c));
    SHOW("shutdown closed fd", shutdown(c, SHUT_RDWR));
    SHOW_DATA("ctl read", buf, read(ctl, buf, sizeof buf));
}

static void client(const char *path) {
    int ctl = connect_to(path);
    char buf[64];

    say("-- A: SHUT_WR with data in flight");
    int a = connect_to(path);
    static char bulk[BULK];
    pat_fill(bulk, 0, BULK);
    write_full(a, bulk, BULK);
    SHOW("shutdown SHUT_WR", shutdown(a, SHUT_WR));
    SHOW("write after SHUT_WR", write(a, "z", 1));
    SHOW("send MSG_NOSIGNAL after SHUT_WR", send(a, "z", 1, MSG_NOSIGNAL));
    SHOW_DATA("read reply", buf, read(a, buf, 5));
    send_byte(ctl, '1');
    SHOW_DATA("read", buf, read(a, buf, sizeof buf));
    poll_one("poll after peer close", a, ALL, 0);
    SHOW("close", close(a));

    say("-- B: peer SHUT_RD");
    int b = connect_to(path);
    SHOW("write", write(b, "x", 1));
    send_byte(ctl, '2');
    expect_byte(ctl, '3');
    poll_one("poll", b, ALL, 0);
    SHOW("send MSG_NOSIGNAL", send(b, "y", 1, MSG_NOSIGNAL));
    SHOW("write", write(b, "y", 1));
    send_byte(ctl, '4');
    SHOW_DATA("read", buf, read(b, buf, 4));
    SHOW("close", close(b));
    send_byte(ctl, '5');

    say("-- C: peer SHUT_RDWR");
    int c = connect_to(path);
    SHOW("write", write(c, "pending", 7));
    send_byte(ctl, '6');
    expect_byte(ctl, '7');
    poll_one("poll", c, ALL, 0);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    SHOW("send MSG_NOSIGNAL", send(c, "y", 1, MSG_NOSIGNAL));
    SHOW("shutdown SHUT_RDWR", shutdown(c, SHUT_RDWR));
    SHOW("close", close(c));
    send_byte(ctl, '8');
    SHOW("close ctl", close(ctl));
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    return run_role(argc, argv, server, client);
}
