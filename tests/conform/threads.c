/*
 * Threads on one socket.
 *
 *   threads server PATH / threads client PATH
 *
 * Connection 1, full duplex: on each end one thread writes 8 MiB (random write sizes) while
 * another reads the peer's 8 MiB (random read sizes) and checks every byte.
 * Connection 2, two concurrent readers: the server writes 8 MiB; two client threads read it
 * concurrently until EOF; together they must have read every byte exactly once (count and
 * byte histogram against the sent pattern).
 * Connection 3, two concurrent writers: two client threads each write 20 000 records of 64
 * bytes (one write each); the server checks that every record arrived whole and that each
 * writer's records arrived in order.
 */
#include "conform.h"

#include <pthread.h>

#define STREAM (8u << 20)
#define RECORDS 20000
#define RECLEN 64

struct job {
    int fd;
    uint64_t seed;
    uint64_t bytes;
    int ok;
    uint64_t hist[256];
};

static void *writer(void *arg) {
    struct job *j = arg;
    struct xs rnd = xs_new(j->seed);
    static __thread char buf[65536];
    uint64_t at = 0;
    while (at < j->bytes) {
        size_t n = xs_range(&rnd, 1, sizeof buf);
        if (n > j->bytes - at) n = (size_t)(j->bytes - at);
        pat_fill(buf, at + j->seed, n);
        write_full(j->fd, buf, n);
        at += n;
    }
    j->ok = 1;
    return NULL;
}

/* Reads exactly j->bytes of the pattern starting at j->seed, checking each byte. */
static void *reader(void *arg) {
    struct job *j = arg;
    struct xs rnd = xs_new(j->seed + 99);
    static __thread char buf[65536];
    uint64_t at = 0;
    j->ok = 1;
    while (at < j->bytes) {
        size_t n = xs_range(&rnd, 1, sizeof buf);
        if (n > j->bytes - at) n = (size_t)(j->bytes - at);
        ssize_t r = read(j->fd, buf, n);
        if (r < 0 && errno == EINTR) continue;
        CHECK(r > 0);
        j->ok &= pat_check(buf, at + j->seed, (size_t)r);
        at += (uint64_t)r;
    }
    return NULL;
}

/* Reads until EOF, counting bytes and their histogram. */
static void *hist_reader(void *arg) {
    struct job *j = arg;
    struct xs rnd = xs_new(j->seed);
    static __thread unsigned char buf[4096];
    for (;;) {
        size_t n = xs_range(&rnd, 1, sizeof buf);
        ssize_t r = read(j->fd, buf, n);
        if (r < 0 && errno == EINTR) continue;
        CHECK(r >= 0);
        if (r == 0) break;
        j->bytes += (uint64_t)r;
        for (ssize_t i = 0; i < r; i++) j->hist[buf[i]]++;
    }
    return NULL;
}

struct rec_job {
    int fd;
    int id;
};

static void *rec_writer(void *arg) {
    struct rec_job *j = arg;
    char rec[RECLEN];
    for (uint32_t seq = 0; seq < RECORDS; seq++) {
        memset(rec, 'a' + j->id, sizeof rec);
        memcpy(rec, &j->id, 4);
        memcpy(rec + 4, &seq, 4);
        CHECK(write(j->fd, rec, RECLEN) == RECLEN);
    }
    return NULL;
}

static void duplex(int fd, int server) {
    struct job w = {.fd = fd, .seed = server ? 1000 : 2000, .bytes = STREAM};
    struct job r = {.fd = fd, .seed = server ? 2000 : 1000, .bytes = STREAM};
    pthread_t tw, tr;
    CHECK(pthread_create(&tw, NULL, writer, &w) == 0);
    CHECK(pthread_create(&tr, NULL, reader, &r) == 0);
    pthread_join(tw, NULL);
    pthread_join(tr, NULL);
    say("duplex: wrote %u, read %u, content ok: %s", STREAM, STREAM, r.ok && w.ok ? "yes" : "no");
}

static void server(const char *path) {
    int lfd = listen_on(path);
    char buf[8];

    int c1 = accept_one(lfd);
    duplex(c1, 1);
    SHOW_DATA("duplex: read", buf, read(c1, buf, sizeof buf));
    SHOW("close", close(c1));

    int c2 = accept_one(lfd);
    struct job w = {.fd = c2, .seed = 3000, .bytes = STREAM};
    writer(&w);
    say("two readers: wrote %u", STREAM);
    SHOW("close", close(c2));

    int c3 = accept_one(lfd);
    uint32_t next[2] = {0, 0};
    int whole = 1, ordered = 1;
    char rec[RECLEN];
    for (;;) {
        size_t n = read_full(c3, rec, RECLEN);
        if (n == 0) break;
        CHECK(n == RECLEN);
        int32_t id;
        uint32_t seq;
        memcpy(&id, rec, 4);
        memcpy(&seq, rec + 4, 4);
        if (id != 0 && id != 1) {
            whole = 0;
            break;
        }
        for (int i = 8; i < RECLEN; i++)
            if (rec[i] != 'a' + id) whole = 0;
        if (seq != next[id]) ordered = 0;
        next[id] = seq + 1;
    }
    say("two writers: records %u + %u, whole: %s, in order: %s", next[0], next[1], whole ? "yes" : "no",
        ordered ? "yes" : "no");
}

static void client(const char *path) {
    int c1 = connect_to(path);
    duplex(c1, 0);
    SHOW("close", close(c1));

    int c2 = connect_to(path);
    struct job a = {.fd = c2, .seed = 1}, b = {.fd = c2, .seed = 2};
    pthread_t ta, tb;
    CHECK(pthread_create(&ta, NULL, hist_reader, &a) == 0);
    CHECK(pthread_create(&tb, NULL, hist_reader, &b) == 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    uint64_t expect[256] = {0};
    for (uint64_t i = 0; i < STREAM; i++) expect[pat(3000 + i)]++;
    int same = 1;
    for (int i = 0; i < 256; i++)
        if (a.hist[i] + b.hist[i] != expect[i]) same = 0;
    say("two readers: together %llu bytes, histogram matches: %s", (unsigned long long)(a.bytes + b.bytes),
        same ? "yes" : "no");
    SHOW("close", close(c2));

    int c3 = connect_to(path);
    struct rec_job r0 = {c3, 0}, r1 = {c3, 1};
    CHECK(pthread_create(&ta, NULL, rec_writer, &r0) == 0);
    CHECK(pthread_create(&tb, NULL, rec_writer, &r1) == 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    say("two writers: done");
    SHOW("close", close(c3));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
