/*
 * Signals during blocking calls on the socket.
 *
 *   signals server PATH / signals client PATH
 *
 * The client blocks in read (nothing to read) while a helper thread signals the main thread
 * (SIGUSR1) every 10 ms until the read returned:
 *   - handler without SA_RESTART: read -> -1 EINTR;
 *   - handler with SA_RESTART: after a few signals the helper asks the server for data (one
 *     'g' on the socket, written by the helper); the restarted read returns it;
 *   - poll and epoll_wait are never restarted: -1 EINTR even with SA_RESTART.
 * A signal that lands before the call starts only runs the handler; the next one interrupts
 * the call, so every line is fixed.
 */
#include "conform.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/epoll.h>

static atomic_int in_call, call_done;
static atomic_int handled;
static pthread_t main_thread;
static int sock;
static int ask_after; /* ask the server for data once this many signals were handled */

static void on_usr1(int sig) {
    (void)sig;
    atomic_fetch_add(&handled, 1);
}

static void *pester(void *arg) {
    (void)arg;
    int asked = 0;
    while (!atomic_load(&in_call)) usleep(1000);
    while (!atomic_load(&call_done)) {
        pthread_kill(main_thread, SIGUSR1);
        usleep(10000);
        if (ask_after && !asked && atomic_load(&handled) >= ask_after) {
            send_byte(sock, 'g');
            asked = 1;
        }
    }
    return NULL;
}

/* Runs `call` on the main thread under the pester thread. */
#define UNDER_SIGNALS(what, restart, ask, call)                                                \
    do {                                                                                       \
        on_signal(SIGUSR1, on_usr1, (restart) ? SA_RESTART : 0);                               \
        atomic_store(&handled, 0);                                                             \
        atomic_store(&in_call, 0);                                                             \
        atomic_store(&call_done, 0);                                                           \
        ask_after = (ask);                                                                     \
        pthread_t t_;                                                                          \
        CHECK(pthread_create(&t_, NULL, pester, NULL) == 0);                                   \
        atomic_store(&in_call, 1);                                                             \
        errno = 0;                                                                             \
        long r_ = (long)(call);                                                                \
        int e_ = errno;                                                                        \
        atomic_store(&call_done, 1);                                                           \
        pthread_join(t_, NULL);                                                                \
        say("%s -> %s", (what), rcstr(r_, e_));                                                \
        say("  handler ran: %s", atomic_load(&handled) > 0 ? "yes" : "no");                    \
    } while (0)

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    int served = 0;
    for (;;) {
        char cmd;
        if (read_full(c, &cmd, 1) == 0) break;
        CHECK(cmd == 'g');
        write_str(c, "data");
        served++;
    }
    say("served %d requests, then EOF", served);
}

static void client(const char *path) {
    sock = connect_to(path);
    main_thread = pthread_self();
    char buf[16];
    UNDER_SIGNALS("read without SA_RESTART", 0, 0, read(sock, buf, sizeof buf));
    UNDER_SIGNALS("recv without SA_RESTART", 0, 0, recv(sock, buf, sizeof buf, 0));
    UNDER_SIGNALS("read with SA_RESTART", 1, 3, read(sock, buf, 4));
    say("  data %s", quoted(buf, 4));
    UNDER_SIGNALS("recv MSG_WAITALL with SA_RESTART", 1, 3, recv(sock, buf, 4, MSG_WAITALL));
    say("  data %s", quoted(buf, 4));
    struct pollfd p = {.fd = sock, .events = POLLIN};
    UNDER_SIGNALS("poll(-1) with SA_RESTART", 1, 0, poll(&p, 1, -1));
    int ep = epoll_create1(0);
    CHECK(ep >= 0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = sock}, out;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, sock, &ev) == 0);
    UNDER_SIGNALS("epoll_wait(-1) with SA_RESTART", 1, 0, epoll_wait(ep, &out, 1, -1));
    SHOW("close", close(sock));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
