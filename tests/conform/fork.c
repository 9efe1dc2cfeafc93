/*
 * fork after accept (and after connect): parent and child both use the connection, and a
 * child closing its copy does not end the parent's.
 *
 *   fork server PATH / fork client PATH
 *
 * Server: reads "hello", forks; the child writes "from-child", reads "to-child", closes its
 * copy and exits while the parent waits; then the parent writes "from-parent" and reads
 * "to-parent". Client: reads both, and in between forks a child that only closes its copy.
 * A parent prints only after its child has exited, so the lines keep their order.
 */
#include "conform.h"

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    char buf[32];
    expect_str(c, "hello");
    say("read hello");
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        SHOW("child: write", write(c, "from-child", 10));
        expect_str(c, "to-child");
        say("child: read to-child");
        SHOW("child: close its copy", close(c));
        _exit(0);
    }
    say("child %s", statusstr(wait_child(child)));
    SHOW("write", write(c, "from-parent", 11));
    expect_str(c, "to-parent");
    say("read to-parent");
    /* A child that exits without closing: its copy goes away with it. */
    child = fork();
    CHECK(child >= 0);
    if (child == 0) _exit(0);
    say("second child %s", statusstr(wait_child(child)));
    SHOW("write", write(c, "bye", 3));
    SHOW_DATA("read", buf, read(c, buf, sizeof buf));
    SHOW("close", close(c));
}

static void client(const char *path) {
    int fd = connect_to(path);
    char buf[32];
    SHOW("write", write(fd, "hello", 5));
    expect_str(fd, "from-child");
    say("read from-child");
    SHOW("write", write(fd, "to-child", 8));
    expect_str(fd, "from-parent");
    say("read from-parent");
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        SHOW("child: close its copy", close(fd));
        _exit(0);
    }
    say("child %s", statusstr(wait_child(child)));
    SHOW("write", write(fd, "to-parent", 9));
    expect_str(fd, "bye");
    say("read bye");
    SHOW("close", close(fd));
    (void)buf;
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
