/*
 * stdio over a connected stream socket: fdopen(fgets, fprintf, fflush, fileno, fclose), a forked
 * child that dup2()s the socket onto stdout and printf()s (with output pending from before the
 * dup2), and an exec'ed image whose stdin and stdout are the socket (the inetd pattern) using
 * fgets/printf only. glibc's stdio reads and writes with its own internal calls.
 *
 *   stdio server PATH / stdio client PATH
 *
 * The client sends lines and prints every reply line; each step waits for its reply, so the
 * transcript is fixed.
 */
#include "conform.h"

/* The exec'ed image: a line-echo service on stdin/stdout, stdio only, until EOF. */
static void image(void) {
    char line[256];
    int n = 0;
    while (fgets(line, sizeof line, stdin)) {
        printf("image %d: %s", ++n, line);
        fflush(stdout);
    }
    printf("image: EOF after %d lines, fileno(stdin) %d fileno(stdout) %d\n", n, fileno(stdin), fileno(stdout));
    fflush(stdout);
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);

    say("-- fdopen");
    FILE *f = fdopen(c, "r+");
    CHECK(f != NULL);
    say("fileno is the fd: %d", fileno(f) == c);
    char line[256];
    for (int i = 0; i < 3; i++) {
        CHECK(fgets(line, sizeof line, f) != NULL);
        say("fgets -> %s", quoted(line, (long)strlen(line)));
        fprintf(f, "reply %d to %s", i, line);
        CHECK(fflush(f) == 0);
    }
    errno = 0;
    long pos = ftell(f);
    say("ftell -> %ld %s", pos, pos < 0 ? errname(errno) : "");
    FILE *bad = fdopen(c, "q");
    say("fdopen bad mode -> %s %s", bad ? "stream" : "NULL", bad ? "" : errname(errno));

    say("-- a forked child: dup2 onto stdout, printf");
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        printf("pending before dup2; "); /* (stdout is the transcript pipe: buffered, not sent) */
        CHECK(dup2(c, 1) == 1);
        printf("child printf after dup2\n");
        fflush(stdout);
        _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    say("child exited 0");
    CHECK(fgets(line, sizeof line, f) != NULL);
    say("fgets -> %s", quoted(line, (long)strlen(line)));
    /* Nothing more is sent before this line arrives: the image reads the rest. */
    fprintf(f, "go ahead\n");
    CHECK(fflush(f) == 0);

    say("-- an exec'ed image on stdin/stdout");
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        CHECK(dup2(c, 0) == 0 && dup2(c, 1) == 1);
        close(c);
        execl("/proc/self/exe", "stdio", "image", (char *)NULL);
        _exit(127);
    }
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    say("image exited 0");
    say("fclose -> %d", fclose(f));
}

static void client(const char *path) {
    int fd = connect_to(path);
    FILE *in = fdopen(dup(fd), "r");
    CHECK(in != NULL);
    char line[256];
    for (int i = 0; i < 3; i++) {
        char msg[64];
        int n = snprintf(msg, sizeof msg, "line %d\n", i);
        write_full(fd, msg, (size_t)n);
        CHECK(fgets(line, sizeof line, in) != NULL);
        say("reply: %s", quoted(line, (long)strlen(line)));
    }
    CHECK(fgets(line, sizeof line, in) != NULL);
    say("from the child: %s", quoted(line, (long)strlen(line)));
    write_full(fd, "to the child\n", 13);
    CHECK(fgets(line, sizeof line, in) != NULL);
    say("then: %s", quoted(line, (long)strlen(line)));
    for (int i = 0; i < 3; i++) {
        char msg[64];
        int n = snprintf(msg, sizeof msg, "request %d\n", i);
        write_full(fd, msg, (size_t)n);
        CHECK(fgets(line, sizeof line, in) != NULL);
        say("from the image: %s", quoted(line, (long)strlen(line)));
    }
    SHOW("shutdown SHUT_WR", shutdown(fd, SHUT_WR));
    while (fgets(line, sizeof line, in)) say("from the image: %s", quoted(line, (long)strlen(line)));
    say("EOF");
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "image")) {
        image();
        return 0;
    }
    return run_role(argc, argv, server, client);
}
