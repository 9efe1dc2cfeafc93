/*
 * SO_SNDTIMEO and SO_RCVTIMEO: a write blocked on a full buffer ends after SO_SNDTIMEO (EAGAIN
 * when nothing went, the partial count when some bytes did) and ignores SO_RCVTIMEO; a read on
 * an empty buffer ends after SO_RCVTIMEO (EAGAIN) and ignores SO_SNDTIMEO.
 *
 *   timeouts server PATH / timeouts client PATH
 *
 * Two connections: the data one (1) and a sync one (2), so that each end knows the other's
 * state while a direction of (1) is full. A buffer is filled by non-blocking writes until
 * EAGAIN, so no count depends on a buffer size or on timing; the pauses only make it likelier
 * that a call really waits, they change no line.
 */
#include "conform.h"

#include <sys/time.h>

static void set_timeo(int fd, int name, int ms) {
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    CHECK(setsockopt(fd, SOL_SOCKET, name, &tv, sizeof tv) == 0);
}

static void set_nonblocking(int fd, int on) {
    int flags = fcntl(fd, F_GETFL);
    CHECK(flags >= 0);
    CHECK(fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) == 0);
}

/* Non-blocking writes until EAGAIN; yields the bytes written. */
static uint64_t fill(int fd) {
    static char chunk[4096];
    memset(chunk, 'f', sizeof chunk);
    set_nonblocking(fd, 1);
    uint64_t total = 0;
    for (;;) {
        ssize_t n = write(fd, chunk, sizeof chunk);
        if (n < 0) {
            CHECK(errno == EAGAIN);
            break;
        }
        total += (uint64_t)n;
    }
    set_nonblocking(fd, 0);
    return total;
}

/* Blocking reads until EOF; yields the bytes read. */
static uint64_t drain(int fd) {
    static char buf[65536];
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        CHECK(n >= 0);
        if (n == 0) return total;
        total += (uint64_t)n;
    }
}

static void send_count(int fd, uint64_t n) { write_full(fd, &n, sizeof n); }

static uint64_t recv_count(int fd) {
    uint64_t n;
    CHECK(read_full(fd, &n, sizeof n) == sizeof n);
    return n;
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int data = accept_one(lfd);
    int sync = accept_one(lfd);

    uint64_t filled = fill(data);
    say("filled the data connection: %s", filled > 0 ? "yes" : "no");
    set_timeo(data, SO_SNDTIMEO, 100);
    SHOW("write 1 on a full buffer, SO_SNDTIMEO 100 ms", write(data, "z", 1));
    SHOW("send 1 MSG_NOSIGNAL on a full buffer, SO_SNDTIMEO 100 ms", send(data, "z", 1, MSG_NOSIGNAL));
    set_timeo(data, SO_SNDTIMEO, 0);
    set_timeo(data, SO_RCVTIMEO, 20);
    send_byte(sync, 'g');
    /* The client drains after a pause: this write must wait for it, SO_RCVTIMEO is not its. */
    SHOW("write 100 on a full buffer, only SO_RCVTIMEO 20 ms", write(data, "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789", 100));
    set_timeo(data, SO_RCVTIMEO, 0);
    SHOW("shutdown SHUT_WR", shutdown(data, SHUT_WR));
    uint64_t got = recv_count(sync);
    say("the client read every byte written: %s", got == filled + 100 ? "yes" : "no");

    /* The other way: the client writes more than fits, with SO_SNDTIMEO (partial count). */
    expect_byte(sync, 'p');
    uint64_t received = drain(data);
    send_count(sync, received);

    /* The client's read with SO_RCVTIMEO times out: nothing is sent until its 'q'. */
    expect_byte(sync, 'q');
    usleep(100000);
    write_full(sync, "late", 4);
    expect_byte(sync, 'e');
    SHOW("close data", close(data));
    SHOW("close sync", close(sync));
}

static void client(const char *path) {
    int data = connect_to(path);
    int sync = connect_to(path);

    expect_byte(sync, 'g');
    usleep(150000);
    uint64_t got = drain(data);
    send_count(sync, got);

    static char big[64 << 20];
    memset(big, 'b', sizeof big);
    set_timeo(data, SO_SNDTIMEO, 100);
    errno = 0;
    ssize_t n = write(data, big, sizeof big);
    say("write 64 MiB, SO_SNDTIMEO 100 ms, nobody reads -> %s", n > 0 && (size_t)n < sizeof big ? "a partial count" : rcstr(n, errno));
    set_timeo(data, SO_SNDTIMEO, 0);
    SHOW("shutdown SHUT_WR", shutdown(data, SHUT_WR));
    send_byte(sync, 'p');
    say("the server read every byte written: %s", recv_count(sync) == (uint64_t)n ? "yes" : "no");

    char buf[8];
    set_timeo(sync, SO_RCVTIMEO, 50);
    SHOW("read on an empty buffer, SO_RCVTIMEO 50 ms", read(sync, buf, sizeof buf));
    SHOW("recv on an empty buffer, SO_RCVTIMEO 50 ms", recv(sync, buf, sizeof buf, 0));
    set_timeo(sync, SO_RCVTIMEO, 0);
    set_timeo(sync, SO_SNDTIMEO, 20);
    send_byte(sync, 'q');
    SHOW_DATA("read 4, only SO_SNDTIMEO 20 ms (the server answers after 100 ms)", buf, recv(sync, buf, 4, MSG_WAITALL));
    send_byte(sync, 'e');
    SHOW("read at EOF", read(sync, buf, 1));
    SHOW("close data", close(data));
    SHOW("close sync", close(sync));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
