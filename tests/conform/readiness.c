/*
 * Readiness calls as the kernel answers them, beyond the echo loops:
 *
 *   readiness server PATH MODE / readiness client PATH
 *
 * MODE select-big: the connection is moved to fd 1500 (RLIMIT_NOFILE raised) and waited on
 * with select and pselect over a malloc'ed bitmap of 1501 bits (larger than FD_SETSIZE; the
 * bits are set by hand: glibc's FD_SET stops at FD_SETSIZE, and fortified builds abort there).
 *
 * The client sends the next word of its list each time the server sends it a 'g', and prints
 * what it read when the server closes. The server only asks with timeout 0 after a blocking
 * wait showed that the word arrived, so every answer is fixed.
 */
#include "conform.h"

#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/select.h>

static const char *const words[] = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"};

/* A bitmap of `nfds` bits laid out as the kernel reads an fd_set: bit fd%64 of word fd/64. */
typedef unsigned long word_t;
#define WORD_BITS (8 * sizeof(word_t))

static word_t *bitmap(size_t nfds) { return calloc((nfds + WORD_BITS - 1) / WORD_BITS, sizeof(word_t)); }
static void bit_set(word_t *m, int fd) { m[fd / WORD_BITS] |= 1UL << (fd % WORD_BITS); }
static int bit_get(const word_t *m, int fd) { return (m[fd / WORD_BITS] >> (fd % WORD_BITS)) & 1; }
static int bits_total(const word_t *m, size_t nfds) {
    int n = 0;
    for (size_t w = 0; w < (nfds + WORD_BITS - 1) / WORD_BITS; w++) n += __builtin_popcountl(m[w]);
    return n;
}

static void raise_nofile(rlim_t want) {
    struct rlimit r;
    CHECK(getrlimit(RLIMIT_NOFILE, &r) == 0);
    if (r.rlim_cur < want) {
        CHECK(r.rlim_max >= want);
        r.rlim_cur = want;
        CHECK(setrlimit(RLIMIT_NOFILE, &r) == 0);
    }
}

/* select (or pselect) on `c` in a big bitmap; prints "what -> rc rd=B wr=B total=N". */
static int big_select(const char *what, int c, int nfds, int want_rd, int want_wr, int timeout_ms, int use_pselect) {
    word_t *rd = bitmap((size_t)nfds), *wr = bitmap((size_t)nfds);
    CHECK(rd && wr);
    if (want_rd) bit_set(rd, c);
    if (want_wr) bit_set(wr, c);
    int rc;
    do {
        if (use_pselect) {
            struct timespec ts = {.tv_sec = timeout_ms / 1000, .tv_nsec = (timeout_ms % 1000) * 1000000L};
            rc = pselect(nfds, (fd_set *)(want_rd ? (void *)rd : NULL), (fd_set *)(want_wr ? (void *)wr : NULL), NULL,
                         timeout_ms < 0 ? NULL : &ts, NULL);
        } else {
            struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000L};
            rc = select(nfds, (fd_set *)(want_rd ? (void *)rd : NULL), (fd_set *)(want_wr ? (void *)wr : NULL), NULL,
                        timeout_ms < 0 ? NULL : &tv);
        }
    } while (rc < 0 && errno == EINTR);
    if (rc < 0)
        say("%s -> %s", what, rcstr(rc, errno));
    else
        say("%s -> %d rd=%d wr=%d total=%d", what, rc, want_rd ? bit_get(rd, c) : -1, want_wr ? bit_get(wr, c) : -1,
            bits_total(rd, (size_t)nfds) + bits_total(wr, (size_t)nfds));
    free(rd);
    free(wr);
    return rc;
}

static void select_big(int c) {
    char buf[64];
    const int high = 1500;
    raise_nofile(2100);
    CHECK(dup2(c, high) == high);
    CHECK(close(c) == 0);
    c = high;
    say("-- select and pselect with the connection at fd %d, bitmaps of %d bits", high, high + 1);
    big_select("select(0) write", c, high + 1, 0, 1, 0, 0);
    big_select("select(0) read, nothing yet", c, high + 1, 1, 0, 0, 0);
    big_select("select(0) read and write", c, high + 1, 1, 1, 0, 0);
    send_byte(c, 'g');
    big_select("select(NULL) read, word asked", c, high + 1, 1, 0, -1, 0);
    big_select("select(0) read and write", c, high + 1, 1, 1, 0, 0);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    big_select("select(0) read, drained", c, high + 1, 1, 0, 0, 0);
    send_byte(c, 'g');
    big_select("pselect(NULL) read, word asked", c, high + 1, 1, 0, -1, 1);
    big_select("pselect(0) read and write", c, high + 1, 1, 1, 0, 1);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    send_byte(c, 'g');
    big_select("select(10s) read, word asked", c, high + 1, 1, 0, 10000, 0);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));

    say("-- nfds beyond the connection, and a closed fd in the set");
    send_byte(c, 'g');
    big_select("select(NULL) nfds 2048", c, 2048, 1, 0, -1, 0);
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    {
        const int nfds = high + 1;
        word_t *rd = bitmap((size_t)nfds);
        CHECK(rd);
        bit_set(rd, c);
        bit_set(rd, high - 3); /* not open */
        struct timeval tv = {0, 0};
        SHOW("select(0) with a closed fd", select(nfds, (fd_set *)(void *)rd, NULL, NULL, &tv));
        free(rd);
    }
    say("closing with the connection idle");
    CHECK(close(c) == 0);
}

static void server(const char *path, const char *mode) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    if (strcmp(mode, "select-big") == 0) select_big(c);
    else die("unknown mode %s", mode);
}

static void client(const char *path) {
    int fd = connect_to(path);
    size_t next = 0;
    for (;;) {
        char cmd;
        ssize_t r = read(fd, &cmd, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            say("read -> %s%s", rcstr(r, errno), r == 0 ? " EOF" : "");
            break;
        }
        CHECK(cmd == 'g');
        CHECK(next < sizeof words / sizeof words[0]);
        write_str(fd, words[next]);
        say("sent %s", words[next++]);
    }
}

static const char *mode_arg;
static void server_main(const char *path) { server(path, mode_arg); }

int main(int argc, char **argv) {
    mode_arg = argc > 3 ? argv[3] : "";
    return run_role(argc, argv, server_main, client);
}
