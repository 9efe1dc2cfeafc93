/*
 * exec of a child that inherits the socket: the new image keeps reading and writing, and no
 * byte already sent is lost.
 *
 *   exec server PATH HOW / exec client PATH      (the child runs this program as: exec image FD)
 *
 * HOW is the exec call: execv, execve, execvp, execl (variadic; libc forwards it to execve
 * inside itself), or posix_spawn (no fork in the program at all).
 *
 * The client writes 2000 bytes at once. The server reads the first 1000, forks, and the child
 * execs this program with the socket's fd number; the parent closes its copy and waits. The
 * new image reads the other 1000 (sent before the exec), writes "from-exec", then reads the
 * client's next 50 000 bytes and EOF.
 */
#include "conform.h"

#include <spawn.h>

static void image(int fd) {
    static char buf[50000];
    say("image: fd is a socket: %s", ({
            int type = 0;
            socklen_t len = sizeof type;
            getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM ? "yes" : "no";
        }));
    size_t got = read_full(fd, buf, 1000);
    say("image: read %zu bytes sent before the exec, content ok: %s", got, pat_check(buf, 1000, got) ? "yes" : "no");
    SHOW("image: write", write(fd, "from-exec", 9));
    got = read_full(fd, buf, sizeof buf);
    say("image: read %zu more bytes, content ok: %s", got, pat_check(buf, 2000, got) ? "yes" : "no");
    SHOW_DATA("image: read", buf, read(fd, buf, sizeof buf));
    SHOW("image: close", close(fd));
}

static void server(const char *path, const char *how) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    char buf[1000];
    size_t got = read_full(c, buf, sizeof buf);
    say("read %zu bytes, content ok: %s", got, pat_check(buf, 0, got) ? "yes" : "no");
    char fdstr[16];
    snprintf(fdstr, sizeof fdstr, "%d", c);
    pid_t child;
    if (!strcmp(how, "posix_spawn")) {
        char *args[] = {"exec", "image", fdstr, NULL};
        extern char **environ;
        posix_spawn_file_actions_t fa;
        CHECK(posix_spawn_file_actions_init(&fa) == 0);
        CHECK(posix_spawn_file_actions_addclose(&fa, lfd) == 0);
        int rc = posix_spawn(&child, "/proc/self/exe", &fa, NULL, args, environ);
        if (rc != 0) die("posix_spawn: %s", errname(rc));
        posix_spawn_file_actions_destroy(&fa);
    } else if ((child = fork()) == 0) {
        close(lfd);
        char *args[] = {"exec", "image", fdstr, NULL};
        extern char **environ;
        if (!strcmp(how, "execv")) execv("/proc/self/exe", args);
        else if (!strcmp(how, "execve")) execve("/proc/self/exe", args, environ);
        else if (!strcmp(how, "execvp")) execvp("/proc/self/exe", args);
        else if (!strcmp(how, "execl")) execl("/proc/self/exe", "exec", "image", fdstr, (char *)NULL);
        else die("unknown exec call %s", how);
        die("%s: %s", how, errname(errno));
    }
    CHECK(child > 0);
    /* The new image prints meanwhile: report the close only after it exited. */
    errno = 0;
    int rc = close(c), err = errno;
    int st = wait_child(child);
    say("close the parent's copy -> %s", rcstr(rc, err));
    say("child %s", statusstr(st));
}

static void client(const char *path) {
    int fd = connect_to(path);
    static char buf[52000];
    pat_fill(buf, 0, sizeof buf);
    SHOW("write 2000", write(fd, buf, 2000));
    expect_str(fd, "from-exec");
    say("read from-exec");
    write_full(fd, buf + 2000, 50000);
    say("wrote 50000");
    SHOW("close", close(fd));
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "image")) {
        image(atoi(argv[2]));
        return 0;
    }
    const char *path;
    if (parse_role(argc, argv, &path)) {
        if (argc != 4) die("usage: exec server PATH execv|execve|execvp|execl");
        server(path, argv[3]);
    } else {
        client(path);
    }
    return 0;
}
