/*
 * The numbers of the application's files: the lowest free number is the application's, as
 * POSIX says, and nothing the application did not open sits among its numbers.
 *
 *   fdnumbers server PATH / fdnumbers client PATH
 *
 * Each end moves bytes both ways (so that a swapped connection is on the rings in both
 * directions), then lists the numbers open below 64, opens /dev/null (the lowest free number),
 * and closes a low number of its own and opens again (that number back). A daemon that reopens
 * its standard streams, or a program that dup2s onto numbers it just freed, relies on this.
 */
#include "conform.h"

#include <dirent.h>

/* The open fds below 64, "0 1 2 ..." (the listing's own fd left out). */
static void list_low(void) {
    DIR *d = opendir("/proc/self/fd");
    CHECK(d != NULL);
    int own = dirfd(d);
    int open_below[64] = {0};
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        int fd = atoi(e->d_name);
        if (fd >= 0 && fd < 64 && fd != own) open_below[fd] = 1;
    }
    closedir(d);
    char line[512] = "";
    for (int fd = 0; fd < 64; fd++) {
        if (open_below[fd]) snprintf(line + strlen(line), sizeof line - strlen(line), " %d", fd);
    }
    say("open below 64:%s", line);
}

static void exchange(int c, int server) {
    char buf[32];
    for (int i = 0; i < 4; i++) {
        if (server) {
            CHECK(read_full(c, buf, 6) == 6);
            write_full(c, "pong!!", 6);
        } else {
            write_full(c, "ping!!", 6);
            CHECK(read_full(c, buf, 6) == 6);
        }
    }
}

static void numbers(int c) {
    list_low();
    int n = open("/dev/null", O_RDONLY | O_CLOEXEC);
    say("open /dev/null -> %d", n);
    CHECK(close(n) == 0);
    /* A low number of its own freed, then taken again. */
    int spare = dup(c);
    say("dup -> %d", spare);
    CHECK(close(spare) == 0);
    int again = open("/dev/null", O_RDONLY | O_CLOEXEC);
    say("after close, open /dev/null -> %d", again);
    CHECK(close(again) == 0);
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    exchange(c, 1);
    numbers(c);
    send_byte(c, 'd');
    expect_byte(c, 'd');
    SHOW("close", close(c));
}

static void client(const char *path) {
    int c = connect_to(path);
    exchange(c, 0);
    numbers(c);
    expect_byte(c, 'd');
    send_byte(c, 'd');
    char b;
    SHOW("read at EOF", read(c, &b, 1));
    SHOW("close", close(c));
}

int main(int argc, char **argv) { return run_role(argc, argv, server, client); }
