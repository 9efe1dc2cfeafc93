/*
 * MSG_OOB (af_unix stream sockets support one out-of-band byte, CONFIG_AF_UNIX_OOB) and
 * ioctl SIOCATMARK, both ways: recv(MSG_OOB) with none sent (EINVAL), the mark before and at
 * the out-of-band byte (in-band reads stop there), recv(MSG_OOB|MSG_PEEK), recv(MSG_OOB), the
 * in-band bytes after it.
 *
 *   oob server PATH / oob client PATH
 *
 * The reader waits for the out-of-band byte with poll(POLLPRI), then for the mark by asking
 * SIOCATMARK until it says 1, printing only the final answer, so the transcript does not depend
 * on timing.
 */
#include "conform.h"

#include <sys/ioctl.h>

static int atmark(int fd) {
    int v = -1;
    CHECK(ioctl(fd, SIOCATMARK, &v) == 0);
    return v;
}

/* Reads the 2 in-band bytes before the mark, then waits for the mark, takes the out-of-band
 * byte, then the 2 in-band bytes after it. */
static void receive_side(int fd, const char *who) {
    char buf[16];
    size_t got = read_full(fd, buf, 2);
    say("%s: read 2 before the mark -> %s", who, quoted(buf, (long)got));
    poll_one("  poll POLLPRI (waits for the out-of-band byte)", fd, POLLPRI, -1);
    int rounds = 0;
    while (atmark(fd) != 1) {
        CHECK(++rounds < 10000);
        usleep(1000);
    }
    say("%s: SIOCATMARK reached 1", who);
    SHOW_DATA("  recv 10 MSG_OOB|MSG_PEEK", buf, recv(fd, buf, 10, MSG_OOB | MSG_PEEK));
    SHOW_DATA("  recv 10 MSG_OOB", buf, recv(fd, buf, 10, MSG_OOB));
    SHOW_DATA("  recv 10 MSG_OOB again", buf, recv(fd, buf, 10, MSG_OOB));
    got = read_full(fd, buf, 2);
    say("%s: read 2 after the mark -> %s", who, quoted(buf, (long)got));
    say("%s: SIOCATMARK -> %d", who, atmark(fd));
    SHOW_DATA("  recv 10 MSG_DONTWAIT (nothing more)", buf, recv(fd, buf, 10, MSG_DONTWAIT));
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int fd = accept_one(lfd);
    char buf[16];
    SHOW_DATA("recv 10 MSG_OOB, none sent", buf, recv(fd, buf, 10, MSG_OOB));
    SHOW_DATA("recv 10 MSG_OOB|MSG_DONTWAIT, none sent", buf, recv(fd, buf, 10, MSG_OOB | MSG_DONTWAIT));
    say("SIOCATMARK, nothing queued -> %d", atmark(fd));
    send_byte(fd, 'g');
    receive_side(fd, "server");
    send_byte(fd, 'h');
    /* The other way. */
    expect_byte(fd, 'r');
    SHOW("send xy", send(fd, "xy", 2, 0));
    SHOW("send Q MSG_OOB", send(fd, "Q", 1, MSG_OOB));
    SHOW("send zw", send(fd, "zw", 2, 0));
    expect_byte(fd, 'k');
    SHOW("close", close(fd));
}

static void client(const char *path) {
    int fd = connect_to(path);
    expect_byte(fd, 'g');
    SHOW("send ab", send(fd, "ab", 2, 0));
    SHOW("send c MSG_OOB", send(fd, "c", 1, MSG_OOB));
    SHOW("send de", send(fd, "de", 2, 0));
    expect_byte(fd, 'h');
    say("client: SIOCATMARK, nothing queued -> %d", atmark(fd));
    send_byte(fd, 'r');
    receive_side(fd, "client");
    send_byte(fd, 'k');
    char b;
    SHOW("read at EOF", read(fd, &b, 1));
    SHOW("close", close(fd));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
