/*
 * A signal handled while a wait is under way ends it as the kernel ends it (issue 13).
 *
 *   sigspin server PATH / sigspin client PATH
 *
 * The client waits on the socket with nothing to come (poll, ppoll, select, pselect,
 * epoll_wait, epoll_pwait with no timeout; a blocking read) while a helper thread sends its
 * waiting thread one SIGUSR1, whose handler sets a flag:
 *   - poll and its kind fail with EINTR, even with SA_RESTART (never restarted);
 *   - a read fails with EINTR without SA_RESTART, and with SA_RESTART when the socket has
 *     SO_RCVTIMEO; with SA_RESTART alone it goes on and gets the data the server sends once
 *     the handler ran.
 * The signal is sent once the waiter is inside the call: asleep in the kernel (a plain socket;
 * /proc says 'S'), or 20 us of CPU into it (a wait that spins in user space first, as a
 * swapped socket's does: before each wait, fast round trips with the server make that spin
 * as long as it gets). A call that goes on after its handler ran gets a second signal 2 s
 * later, so that the transcript shows it ("after the first signal: no") rather than a hang.
 * Each wait runs ROUNDS times.
 *
 * Also: sigaction's old action is the program's own handler with its own flags (also after
 * signal(), for an SA_SIGINFO handler, and after SA_RESETHAND reset it).
 */
#include "conform.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <time.h>

#define ROUNDS 8
/* The bulk write: more than a socket buffer and a ring hold. */
#define BULK (8 << 20)
#define BULK_ROUNDS 3

static int sock;
static pthread_t waiter;
static clockid_t waiter_clock;
static pid_t waiter_tid;
static atomic_int in_call, call_done, handled, ask;
static volatile sig_atomic_t flag;

/* For a round that goes wrong, where the first signal found the waiter (stderr only, never the
 * transcript): the waiter's CPU time when the call started and when the first handler ran, why
 * the pester sent it (asleep or CPU), and the waiter's /proc syscall line when it did. */
static atomic_llong cpu_at_call, cpu_at_handler;
/* CLOCK_MONOTONIC when the first handler ran, when the call returned, and when the pester sent
 * its second signal (0: none): a call that went on after its handler, or a waiter that did not
 * run for a while after its call returned? */
static atomic_llong wall_at_handler, wall_at_second;
static atomic_int sent_asleep;
static char sent_in[160];

static long long own_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void on_usr1(int sig) {
    (void)sig;
    flag = 1;
    if (atomic_fetch_add(&handled, 1) == 0) {
        atomic_store(&cpu_at_handler, own_cpu_ns());
        atomic_store(&wall_at_handler, wall_ns());
    }
}

static long long waiter_cpu_ns(void) {
    struct timespec ts;
    CHECK(clock_gettime(waiter_clock, &ts) == 0);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Whether the waiter sleeps in the kernel (state 'S' in its /proc stat). */
static int waiter_sleeps(void) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)waiter_tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    CHECK(n > 0);
    buf[n] = 0;
    char *end = strrchr(buf, ')');
    return end && end[1] == ' ' && end[2] == 'S';
}

/* The waiter's /proc syscall line (number and arguments, or "running") into `sent_in`. */
static void note_waiter_syscall(void) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)waiter_tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, sent_in, sizeof sent_in - 1) : -1;
    if (fd >= 0) close(fd);
    sent_in[n > 0 ? n : 0] = 0;
    char *nl = strchr(sent_in, '\n');
    if (nl) *nl = 0;
}

static void *pester(void *arg) {
    (void)arg;
    while (!atomic_load(&in_call)) {
    }
    long long start = waiter_cpu_ns();
    while (!atomic_load(&call_done) && !waiter_sleeps() && waiter_cpu_ns() - start < 20000) {
    }
    if (atomic_load(&call_done)) return NULL;
    atomic_store(&sent_asleep, waiter_sleeps());
    note_waiter_syscall();
    pthread_kill(waiter, SIGUSR1);
    if (atomic_load(&ask)) {
        /* A restarted read: the data once its handler ran. */
        while (!atomic_load(&handled)) usleep(100);
        send_byte(sock, 'g');
    }
    for (;;) {
        for (int i = 0; i < 200 && !atomic_load(&call_done); i++) usleep(10000);
        if (atomic_load(&call_done)) return NULL;
        if (!atomic_load(&wall_at_second)) atomic_store(&wall_at_second, wall_ns());
        pthread_kill(waiter, SIGUSR1);
    }
}

/* Round trips with the server, back to back (a swapped socket's waits then spin longest). */
static void ping(int times) {
    for (int i = 0; i < times; i++) {
        char c = 'p';
        send_byte(sock, c);
        CHECK(read_full(sock, &c, 1) == 1 && c == 'p');
    }
}

/* Runs `call` ROUNDS times under one signal each, and prints one line for all of them. */
#define UNDER_A_SIGNAL(what, restart, asking, call, want_rc, want_errno)                       \
    do {                                                                                       \
        on_signal(SIGUSR1, on_usr1, (restart) ? SA_RESTART : 0);                               \
        int as_wanted_ = 0, first_ = 0, flagged_ = 0;                                          \
        long last_rc_ = 0;                                                                     \
        int last_errno_ = 0;                                                                   \
        for (int round_ = 0; round_ < ROUNDS; round_++) {                                      \
            ping(50);                                                                          \
            flag = 0;                                                                          \
            atomic_store(&handled, 0);                                                         \
            atomic_store(&in_call, 0);                                                         \
            atomic_store(&call_done, 0);                                                       \
            atomic_store(&ask, (asking));                                                      \
            atomic_store(&cpu_at_handler, 0);                                                  \
            atomic_store(&wall_at_handler, 0);                                                 \
            atomic_store(&wall_at_second, 0);                                                  \
            sent_in[0] = 0;                                                                    \
            pthread_t t_;                                                                      \
            CHECK(pthread_create(&t_, NULL, pester, NULL) == 0);                               \
            atomic_store(&cpu_at_call, own_cpu_ns());                                          \
            atomic_store(&in_call, 1);                                                         \
            errno = 0;                                                                         \
            long r_ = (long)(call);                                                            \
            int e_ = errno;                                                                    \
            long long returned_ = wall_ns();                                                   \
            int handled_ = atomic_load(&handled);                                              \
            atomic_store(&call_done, 1);                                                       \
            pthread_join(t_, NULL);                                                            \
            if (handled_ != 1)                                                                 \
                fprintf(stderr, "%s, round %d: %d handlers when the call returned; the first ran %lld ns of CPU into " \
                        "the call, sent with the waiter %s in [%s]; the call returned %lld us after the first " \
                        "handler, the second signal was sent %lld us after it\n", (what), round_, handled_, \
                        atomic_load(&cpu_at_handler) - atomic_load(&cpu_at_call),              \
                        atomic_load(&sent_asleep) ? "asleep" : "on CPU", sent_in,              \
                        (returned_ - atomic_load(&wall_at_handler)) / 1000,                    \
                        atomic_load(&wall_at_second) ? (atomic_load(&wall_at_second) - atomic_load(&wall_at_handler)) / 1000 : -1LL); \
            as_wanted_ += r_ == (want_rc) && (r_ >= 0 || e_ == (want_errno));                  \
            first_ += handled_ == 1;                                                           \
            flagged_ += flag == 1;                                                             \
            last_rc_ = r_;                                                                     \
            last_errno_ = e_;                                                                  \
        }                                                                                      \
        say("%s -> %s: %d of %d rounds as wanted, after the first signal in %d, flag set in %d", \
            (what), rcstr(last_rc_, last_errno_), as_wanted_, ROUNDS, first_, flagged_);       \
    } while (0)

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    int served = 0;
    for (;;) {
        char cmd;
        if (read_full(c, &cmd, 1) == 0) break;
        if (cmd == 'p') {
            send_byte(c, 'p');
            continue;
        }
        if (cmd == 'b') {
            /* Not reading for a while: the client's bulk write blocks (and is signalled). */
            usleep(300000);
            static char bulk[BULK];
            CHECK(read_full(c, bulk, BULK) == BULK);
            for (size_t i = 0; i < BULK; i++) CHECK(bulk[i] == 'x');
            send_byte(c, 'k');
            continue;
        }
        CHECK(cmd == 'g');
        write_str(c, "data");
        served++;
    }
    say("served %d requests, then EOF", served);
}

static void info_handler(int sig, siginfo_t *info, void *context) {
    (void)context;
    flag = info->si_signo == sig && info->si_code == SI_TKILL ? 2 : 3;
}

static void usr2_handler(int sig) { (void)sig; }

/* sigaction's old action: the program's own handler and flags. */
static void old_actions(void) {
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR2);
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    CHECK(sigaction(SIGUSR1, NULL, &old) == 0);
    say("SIGUSR1: own handler %s, SA_RESTART %s, SA_SIGINFO %s, SIGUSR2 masked %s", old.sa_handler == on_usr1 ? "yes" : "no",
        old.sa_flags & SA_RESTART ? "yes" : "no", old.sa_flags & SA_SIGINFO ? "yes" : "no",
        sigismember(&old.sa_mask, SIGUSR2) ? "yes" : "no");
    /* The same struct for both: the old action is read before the new one is set. */
    old.sa_flags = 0;
    struct sigaction *volatile both = &old;
    CHECK(sigaction(SIGUSR1, both, both) == 0);
    say("SIGUSR1 again: own handler %s, SA_RESTART %s", old.sa_handler == on_usr1 ? "yes" : "no", old.sa_flags & SA_RESTART ? "yes" : "no");
    say("signal(SIGUSR2) -> %s", signal(SIGUSR2, usr2_handler) == SIG_DFL ? "SIG_DFL" : "other");
    say("signal(SIGUSR2) again -> %s", signal(SIGUSR2, SIG_IGN) == usr2_handler ? "own handler" : "other");
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = info_handler;
    sa.sa_flags = SA_SIGINFO;
    CHECK(sigaction(SIGUSR2, &sa, &old) == 0);
    say("SIGUSR2 before: SIG_IGN %s", old.sa_handler == SIG_IGN ? "yes" : "no");
    CHECK(sigaction(SIGUSR2, NULL, &old) == 0);
    say("SIGUSR2: own siginfo handler %s, SA_SIGINFO %s", old.sa_sigaction == info_handler ? "yes" : "no",
        old.sa_flags & SA_SIGINFO ? "yes" : "no");
    flag = 0;
    CHECK(raise(SIGUSR2) == 0);
    say("raise(SIGUSR2): %s", flag == 2 ? "siginfo of SIGUSR2 from tkill" : flag == 3 ? "wrong siginfo" : "not handled");
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    CHECK(sigaction(SIGUSR2, &sa, NULL) == 0);
    flag = 0;
    CHECK(raise(SIGUSR2) == 0);
    CHECK(sigaction(SIGUSR2, NULL, &old) == 0);
    say("SA_RESETHAND: handled %s, then SIG_DFL %s, SA_RESETHAND kept %s, SA_SIGINFO kept %s", flag == 2 ? "yes" : "no",
        old.sa_handler == SIG_DFL ? "yes" : "no", old.sa_flags & SA_RESETHAND ? "yes" : "no",
        old.sa_flags & SA_SIGINFO ? "yes" : "no");
}

/* A blocking write that moved bytes and then waits for room: any handler ends it with the
 * count, SA_RESTART or not. */
static void bulk_writes(void) {
    on_signal(SIGUSR1, on_usr1, SA_RESTART);
    static char big[BULK];
    memset(big, 'x', sizeof big);
    int partial = 0, first = 0;
    for (int round = 0; round < BULK_ROUNDS; round++) {
        ping(50);
        send_byte(sock, 'b');
        atomic_store(&handled, 0);
        atomic_store(&in_call, 0);
        atomic_store(&call_done, 0);
        atomic_store(&ask, 0);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, pester, NULL) == 0);
        atomic_store(&in_call, 1);
        ssize_t w = write(sock, big, sizeof big);
        int handled_now = atomic_load(&handled);
        atomic_store(&call_done, 1);
        pthread_join(t, NULL);
        partial += w > 0 && (size_t)w < sizeof big;
        first += handled_now == 1;
        /* The rest, so that the server gets all of it. */
        size_t sent = w > 0 ? (size_t)w : 0;
        write_full(sock, big + sent, sizeof big - sent);
        char k;
        CHECK(read_full(sock, &k, 1) == 1 && k == 'k');
    }
    say("write of 8 MiB with SA_RESTART, the server not reading -> a partial count in %d of %d rounds, after the first signal "
        "in %d",
        partial, BULK_ROUNDS, first);
}

static int select_sock(struct timeval *timeout) {
    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(sock, &rd);
    return select(sock + 1, &rd, NULL, NULL, timeout);
}

static int pselect_sock(const struct timespec *timeout) {
    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(sock, &rd);
    return pselect(sock + 1, &rd, NULL, NULL, timeout, NULL);
}

static void client(const char *path) {
    sock = connect_to(path);
    waiter = pthread_self();
    waiter_tid = (pid_t)syscall(SYS_gettid);
    CHECK(pthread_getcpuclockid(waiter, &waiter_clock) == 0);
    old_actions();
    char buf[16];
    struct pollfd p = {.fd = sock, .events = POLLIN};
    /* Each call once before its rounds (its first call binds the symbol). */
    CHECK(poll(&p, 1, 0) == 0);
    UNDER_A_SIGNAL("poll(-1) with SA_RESTART", 1, 0, poll(&p, 1, -1), -1, EINTR);
    struct timespec zero = {0, 0};
    CHECK(ppoll(&p, 1, &zero, NULL) == 0);
    UNDER_A_SIGNAL("ppoll(NULL) with SA_RESTART", 1, 0, ppoll(&p, 1, NULL, NULL), -1, EINTR);
    struct timeval tv0 = {0, 0};
    CHECK(select_sock(&tv0) == 0);
    UNDER_A_SIGNAL("select(NULL) with SA_RESTART", 1, 0, select_sock(NULL), -1, EINTR);
    CHECK(pselect_sock(&zero) == 0);
    UNDER_A_SIGNAL("pselect(NULL) with SA_RESTART", 1, 0, pselect_sock(NULL), -1, EINTR);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = sock}, out;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, sock, &ev) == 0);
    CHECK(epoll_wait(ep, &out, 1, 0) == 0);
    UNDER_A_SIGNAL("epoll_wait(-1) with SA_RESTART", 1, 0, epoll_wait(ep, &out, 1, -1), -1, EINTR);
    CHECK(epoll_pwait(ep, &out, 1, 0, NULL) == 0);
    UNDER_A_SIGNAL("epoll_pwait(-1) with SA_RESTART", 1, 0, epoll_pwait(ep, &out, 1, -1, NULL), -1, EINTR);
    close(ep);
    UNDER_A_SIGNAL("read without SA_RESTART", 0, 0, read(sock, buf, sizeof buf), -1, EINTR);
    UNDER_A_SIGNAL("read with SA_RESTART", 1, 1, read(sock, buf, 4), 4, 0);
    say("  data %s", quoted(buf, 4));
    struct timeval tv = {10, 0};
    CHECK(setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    UNDER_A_SIGNAL("read with SA_RESTART and SO_RCVTIMEO", 1, 0, read(sock, buf, sizeof buf), -1, EINTR);
    tv.tv_sec = 0;
    CHECK(setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    bulk_writes();
    SHOW("close", close(sock));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
