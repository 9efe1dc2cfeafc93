/*
 * sendfile(2) into the socket: with an offset (the file position stays) and without (it
 * moves), a count of 0, at and past EOF, a negative offset, an input that is write-only, a
 * directory, a pipe, a socket, /dev/zero and /dev/null, a bad fd; then a 1 MiB file in one
 * call, read in order by the peer.
 *
 *   sendfile server PATH / sendfile client PATH
 */
#include "conform.h"

#include <sys/sendfile.h>

#define BIG (1 << 20)

static void server(const char *path) {
    int lfd = listen_on(path);
    int fd = accept_one(lfd);
    char name[] = "/tmp/tssx-conform-sendfile-XXXXXX";
    int f = mkstemp(name);
    CHECK(f >= 0);
    unlink(name);
    write_full(f, "0123456789", 10);
    CHECK(lseek(f, 0, SEEK_SET) == 0);

    off_t off = 2;
    SHOW("sendfile offset 2 count 3", sendfile(fd, f, &off, 3));
    say("  offset %lld, position %lld", (long long)off, (long long)lseek(f, 0, SEEK_CUR));
    SHOW("sendfile count 4, no offset", sendfile(fd, f, NULL, 4));
    say("  position %lld", (long long)lseek(f, 0, SEEK_CUR));
    SHOW("sendfile count 0", sendfile(fd, f, NULL, 0));
    SHOW("sendfile count 100 (to EOF)", sendfile(fd, f, NULL, 100));
    say("  position %lld", (long long)lseek(f, 0, SEEK_CUR));
    SHOW("sendfile at EOF", sendfile(fd, f, NULL, 100));
    off = 50;
    SHOW("sendfile offset past EOF", sendfile(fd, f, &off, 100));
    off = -1;
    SHOW("sendfile offset -1", sendfile(fd, f, &off, 5));
    SHOW("sendfile offset -1 count 0", sendfile(fd, f, &off, 0));

    int wr = open("/dev/null", O_WRONLY);
    SHOW("sendfile from a write-only fd", sendfile(fd, wr, NULL, 5));
    int dir = open("/", O_RDONLY | O_DIRECTORY);
    SHOW("sendfile from a directory", sendfile(fd, dir, NULL, 5));
    SHOW("sendfile from a directory, count 0", sendfile(fd, dir, NULL, 0));
    int p[2];
    CHECK(pipe(p) == 0);
    write_full(p[1], "piped", 5);
    SHOW("sendfile from a pipe", sendfile(fd, p[0], NULL, 5));
    off = 0;
    SHOW("sendfile from a pipe with an offset", sendfile(fd, p[0], &off, 5));
    SHOW("sendfile from a pipe, count 0", sendfile(fd, p[0], NULL, 0));
    SHOW("sendfile from the socket itself", sendfile(fd, fd, NULL, 5));
    int zero = open("/dev/zero", O_RDONLY);
    SHOW("sendfile from /dev/zero count 3", sendfile(fd, zero, NULL, 3));
    int null = open("/dev/null", O_RDONLY);
    SHOW("sendfile from /dev/null count 3", sendfile(fd, null, NULL, 3));
    SHOW("sendfile from a bad fd", sendfile(fd, 999, NULL, 3));
    write_full(fd, "|", 1);

    /* A 1 MiB file in one call (a blocking socket takes all of it). */
    CHECK(ftruncate(f, 0) == 0);
    static char big[BIG];
    pat_fill(big, 0, BIG);
    CHECK(pwrite(f, big, BIG, 0) == BIG);
    off = 0;
    SHOW("sendfile 1 MiB", sendfile(fd, f, &off, BIG));
    say("  offset %lld", (long long)off);
    expect_byte(fd, 'd');
    SHOW("close", close(fd));
}

static void client(const char *path) {
    int fd = connect_to(path);
    char buf[64];
    size_t n = 0;
    /* Everything up to the '|' marker. */
    for (;;) {
        CHECK(n < sizeof buf);
        CHECK(read_full(fd, buf + n, 1) == 1);
        if (buf[n] == '|') break;
        n++;
    }
    say("client: received %s", quoted(buf, (long)n));
    static char big[BIG];
    size_t got = read_full(fd, big, BIG);
    say("client: 1 MiB: %zu bytes, in order: %s", got, pat_check(big, 0, got) ? "yes" : "no");
    send_byte(fd, 'd');
    SHOW("read at EOF", read(fd, buf, 1));
    SHOW("close", close(fd));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
