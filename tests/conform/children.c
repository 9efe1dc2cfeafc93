/*
 * Children that inherit the connection: posix_spawn with file actions, vfork, system(),
 * popen(), and children without the hook.
 *
 *   children server PATH HOW / children client PATH HOW
 *   (children use this program as: children child IN OUT | children child-closed FD |
 *    children popen-read FD | children popen-write FD)
 *
 * Every HOW follows the same exchange. The client writes 1000 bytes; the server reads 500 (the
 * other 500 are still unread when the child starts, except for the children without the hook,
 * see below), then HOW runs; what it writes to the connection ends with "ready\n". The client
 * prints what came before "ready", then writes 20 000 bytes and shuts its side down. Whoever
 * holds the connection then reads to EOF and writes "read N ok\n"; the server writes
 * "parent-done\n" and closes, and the client prints the rest it reads until EOF.
 *
 * HOW:
 *   spawn-dup2-both   posix_spawn, actions dup2(sock, 0), dup2(sock, 1): the inetd pattern (the
 *                     socket is close-on-exec, so only 0 and 1 reach the child)
 *   spawn-dup2-in     only dup2(sock, 0) (the child reads and writes fd 0)
 *   spawn-dup2-out    only dup2(sock, 1) (the child reads and writes fd 1)
 *   spawnp-dup2-both  as spawn-dup2-both with posix_spawnp
 *   spawn-addclose    the socket is inheritable but addclose'd: the child has no copy, and the
 *                     parent carries on alone
 *   spawn-reuse       dup2(sock, 0), dup2(sock, 1), then addopen("/dev/null") onto 1 and
 *                     closefrom(3): the child keeps fd 0 only
 *   vfork-close       vfork; the child closes its copy and execs; the parent carries on
 *   vfork-exit        vfork; the child closes its copy and _exit()s
 *   system-stdout     the socket is the process's stdout, system("echo ...") writes to it
 *   popen             the socket is inheritable; popen(..., "r") runs a child that reads the
 *                     500 unread bytes from it, popen(..., "w") one that writes to it
 *   nohook-exec       fork, then exec of `env -u LD_PRELOAD sh -c ...` with the socket on 0
 *                     and 1 (a child without the hook, reading and writing the real socket)
 *   nohook-system     system("env -u LD_PRELOAD /bin/echo ...") with the socket as stdout
 *   nohook-spawn      posix_spawn of /bin/sh with an environment without LD_PRELOAD
 *   nohook-exec-unread   fork, then exec of this program (`child 0 1`) without LD_PRELOAD, with
 *                        500 bytes the parent has not read (on the rings when swapped)
 *   nohook-spawn-unread  the same through posix_spawn
 * The other nohook ways read all 1000 bytes first.
 */
#include "conform.h"

#include <spawn.h>

extern char **environ;

static const char *self;

static void find_self(void) { self = self_path(); }

/* The child of the spawn ways: reads the 500 unread bytes from IN, answers on OUT, reads IN to
 * EOF, answers again. Prints nothing (its stdout may be the socket). */
static void child(int in, int out) {
    static char buf[20000];
    size_t got = read_full(in, buf, 500);
    char line[128];
    snprintf(line, sizeof line, "child got %zu ok: %s\nready\n", got, pat_check(buf, 500, got) ? "yes" : "no");
    write_str(out, line);
    got = read_full(in, buf, sizeof buf);
    char extra;
    ssize_t more = read(in, &extra, 1);
    snprintf(line, sizeof line, "child read %zu ok: %s, then %zd\n", got, pat_check(buf, 1000, got) ? "yes" : "no", more);
    write_str(out, line);
}

/* The server's part when no child holds the connection: the rest of the exchange. */
static void finish(int c, int unread) {
    static char buf[20000];
    if (unread) {
        size_t got = read_full(c, buf, 500);
        say("parent read the other %zu bytes, ok: %s", got, pat_check(buf, 500, got) ? "yes" : "no");
    }
    write_str(c, "ready\n");
    size_t got = read_full(c, buf, sizeof buf);
    char extra;
    ssize_t more = read(c, &extra, 1);
    char line[128];
    snprintf(line, sizeof line, "parent read %zu ok: %s, then %zd\n", got, pat_check(buf, 1000, got) ? "yes" : "no", more);
    write_str(c, line);
}

static void done(int c) {
    write_str(c, "parent-done\n");
    SHOW("close", close(c));
}

static pid_t spawn_child(const char *how, int c, int use_p) {
    posix_spawn_file_actions_t fa;
    CHECK(posix_spawn_file_actions_init(&fa) == 0);
    char *in = "0", *out = "1";
    if (!strcmp(how, "both") || !strcmp(how, "reuse")) {
        CHECK(posix_spawn_file_actions_adddup2(&fa, c, 0) == 0);
        CHECK(posix_spawn_file_actions_adddup2(&fa, c, 1) == 0);
        if (!strcmp(how, "reuse")) {
            out = "0";
            CHECK(posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0) == 0);
            CHECK(posix_spawn_file_actions_addclosefrom_np(&fa, 3) == 0);
        }
    } else if (!strcmp(how, "in")) {
        CHECK(posix_spawn_file_actions_adddup2(&fa, c, 0) == 0);
        out = "0";
    } else if (!strcmp(how, "out")) {
        CHECK(posix_spawn_file_actions_adddup2(&fa, c, 1) == 0);
        in = "1";
    } else {
        die("unknown spawn %s", how);
    }
    char *args[] = {"children", "child", in, out, NULL};
    pid_t pid;
    int rc = use_p ? posix_spawnp(&pid, self, &fa, NULL, args, environ) : posix_spawn(&pid, self, &fa, NULL, args, environ);
    if (rc != 0) die("posix_spawn: %s", errname(rc));
    CHECK(posix_spawn_file_actions_destroy(&fa) == 0);
    return pid;
}

/* environ without LD_PRELOAD. */
static char **env_without_preload(void) {
    static char *env[512];
    size_t n = 0;
    for (char **e = environ; *e && n < 511; e++)
        if (strncmp(*e, "LD_PRELOAD=", 11) != 0) env[n++] = *e;
    env[n] = NULL;
    return env;
}

static void server(const char *path, const char *how) {
    find_self();
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    CHECK(fcntl(lfd, F_SETFD, FD_CLOEXEC) == 0);
    static char buf[1000];
    int nohook = !strncmp(how, "nohook", 6);
    size_t first = nohook && !strstr(how, "unread") ? 1000 : 500;
    size_t got = read_full(c, buf, first);
    say("read %zu bytes, ok: %s", got, pat_check(buf, 0, got) ? "yes" : "no");

    if (!strncmp(how, "spawn-", 6) || !strncmp(how, "spawnp-", 7)) {
        int use_p = how[5] == 'p';
        const char *what = strchr(how, '-') + 1;
        if (!strcmp(what, "addclose")) {
            posix_spawn_file_actions_t fa;
            CHECK(posix_spawn_file_actions_init(&fa) == 0);
            CHECK(posix_spawn_file_actions_addclose(&fa, c) == 0);
            char fdstr[16];
            snprintf(fdstr, sizeof fdstr, "%d", c);
            char *args[] = {"children", "child-closed", fdstr, NULL};
            pid_t pid;
            int rc = posix_spawn(&pid, self, &fa, NULL, args, environ);
            if (rc != 0) die("posix_spawn: %s", errname(rc));
            CHECK(posix_spawn_file_actions_destroy(&fa) == 0);
            say("child %s", statusstr(wait_child(pid)));
            finish(c, 1);
        } else {
            /* The inetd pattern: the connection itself is close-on-exec. */
            CHECK(fcntl(c, F_SETFD, FD_CLOEXEC) == 0);
            const char *dup = strchr(what, '-') ? strchr(what, '-') + 1 : what;
            pid_t pid = spawn_child(dup, c, use_p);
            say("child %s", statusstr(wait_child(pid)));
        }
    } else if (!strncmp(how, "vfork-", 6)) {
        int exits = !strcmp(how, "vfork-exit");
        pid_t pid = vfork();
        if (pid == 0) {
            close(c);
            if (exits) _exit(0);
            execl(self, "children", "child-closed", "-1", (char *)NULL);
            _exit(127);
        }
        CHECK(pid > 0);
        say("child %s", statusstr(wait_child(pid)));
        finish(c, 1);
    } else if (!strcmp(how, "system-stdout") || !strcmp(how, "nohook-system")) {
        int out = dup(1);
        CHECK(out >= 0);
        CHECK(dup2(c, 1) == 1);
        int st = system(nohook ? "env -u LD_PRELOAD /bin/echo from-system-without-the-hook" : "echo from-system");
        CHECK(dup2(out, 1) == 1);
        close(out);
        say("system: %s", statusstr(st));
        finish(c, !nohook);
    } else if (!strcmp(how, "popen")) {
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "'%s' popen-read %d", self, c);
        FILE *r = popen(cmd, "r");
        CHECK(r != NULL);
        char line[256] = "";
        if (!fgets(line, sizeof line, r)) strcpy(line, "(nothing)\n");
        line[strcspn(line, "\n")] = 0;
        say("popen r child said: %s", line);
        say("pclose r: %s", statusstr(pclose(r)));
        snprintf(cmd, sizeof cmd, "'%s' popen-write %d", self, c);
        FILE *w = popen(cmd, "w");
        CHECK(w != NULL);
        CHECK(fputs("via-popen-w\n", w) >= 0);
        say("pclose w: %s", statusstr(pclose(w)));
        finish(c, 0);
    } else if (!strcmp(how, "nohook-exec")) {
        pid_t pid = fork();
        if (pid == 0) {
            CHECK(dup2(c, 0) == 0 && dup2(c, 1) == 1);
            close(c);
            char *args[] = {"env", "-u", "LD_PRELOAD", "/bin/sh", "-c", "echo from-exec-without-the-hook; echo ready; wc -c", NULL};
            execve("/usr/bin/env", args, environ);
            die("execve: %s", errname(errno));
        }
        CHECK(pid > 0);
        say("child %s", statusstr(wait_child(pid)));
    } else if (!strcmp(how, "nohook-exec-unread")) {
        pid_t pid = fork();
        if (pid == 0) {
            CHECK(dup2(c, 0) == 0 && dup2(c, 1) == 1);
            close(c);
            char *args[] = {"children", "child", "0", "1", NULL};
            execve(self, args, env_without_preload());
            die("execve: %s", errname(errno));
        }
        CHECK(pid > 0);
        say("child %s", statusstr(wait_child(pid)));
    } else if (!strcmp(how, "nohook-spawn-unread")) {
        posix_spawn_file_actions_t fa;
        CHECK(posix_spawn_file_actions_init(&fa) == 0);
        CHECK(posix_spawn_file_actions_adddup2(&fa, c, 0) == 0);
        CHECK(posix_spawn_file_actions_adddup2(&fa, c, 1) == 0);
        char *args[] = {"children", "child", "0", "1", NULL};
        pid_t pid;
        int rc = posix_spawn(&pid, self, &fa, NULL, args, env_without_preload());
        if (rc != 0) die("posix_spawn: %s", errname(rc));
        CHECK(posix_spawn_file_actions_destroy(&fa) == 0);
        say("child %s", statusstr(wait_child(pid)));
    } else if (!strcmp(how, "nohook-spawn")) {
        posix_spawn_file_actions_t fa;
        CHECK(posix_spawn_file_actions_init(&fa) == 0);
        CHECK(posix_spawn_file_actions_adddup2(&fa, c, 0) == 0);
        CHECK(posix_spawn_file_actions_adddup2(&fa, c, 1) == 0);
        char *args[] = {"sh", "-c", "echo from-spawn-without-the-hook; echo ready; wc -c", NULL};
        pid_t pid;
        int rc = posix_spawn(&pid, "/bin/sh", &fa, NULL, args, env_without_preload());
        if (rc != 0) die("posix_spawn: %s", errname(rc));
        CHECK(posix_spawn_file_actions_destroy(&fa) == 0);
        say("child %s", statusstr(wait_child(pid)));
    } else {
        die("unknown way %s", how);
    }
    done(c);
}

static void client(const char *path) {
    int fd = connect_to(path);
    static char buf[20000];
    pat_fill(buf, 0, 1000);
    write_full(fd, buf, 1000);
    /* Everything up to "ready\n". */
    char text[4096];
    size_t n = 0;
    while (n < sizeof text - 1) {
        size_t got = read_full(fd, text + n, 1);
        if (got == 0) break;
        n++;
        if (n >= 6 && !memcmp(text + n - 6, "ready\n", 6)) break;
    }
    text[n] = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) say("got: %s", line);
    pat_fill(buf, 1000, sizeof buf);
    write_full(fd, buf, sizeof buf);
    SHOW("shutdown SHUT_WR", shutdown(fd, SHUT_WR));
    n = read_full(fd, text, sizeof text - 1);
    text[n] = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        while (*line == ' ') line++;
        say("then: %s", line);
    }
    SHOW("close", close(fd));
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "child")) {
        child(atoi(argv[2]), atoi(argv[3]));
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "child-closed")) {
        int fd = atoi(argv[2]);
        if (fd >= 0) say("child: its copy is closed: %s", fcntl(fd, F_GETFD) < 0 && errno == EBADF ? "yes" : "no");
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "popen-read")) {
        static char buf[500];
        size_t got = read_full(atoi(argv[2]), buf, sizeof buf);
        printf("popen child read %zu unread bytes, ok: %s\n", got, pat_check(buf, 500, got) ? "yes" : "no");
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "popen-write")) {
        char line[256];
        if (!fgets(line, sizeof line, stdin)) return 1;
        write_str(atoi(argv[2]), line);
        return 0;
    }
    const char *path;
    if (argc != 4) die("usage: children server|client PATH HOW");
    if (parse_role(argc, argv, &path)) server(path, argv[3]);
    else client(path);
    return 0;
}
