/*
 * Bad buffers in the middle of the address space get the kernel's answer, never a signal
 * (issue 13 item 4): reads into and writes from a buffer whose second page is PROT_NONE or
 * unmapped, with more bytes to move than the good part holds; buffers wholly in an unmapped,
 * a read-only page, or a file mapping past the file's end; iovec arrays and msghdrs in an
 * unmapped page. The bytes the peer then receives are checked, and the connection keeps
 * working. Then the application's own faults: its SIGSEGV handler (installed before the
 * connection, on an alternate stack) runs for them and leaves with siglongjmp; a handler
 * installed afterwards too; a child with SIG_DFL (and with SIG_IGN) for SIGSEGV, or SIG_DFL
 * for SIGBUS, dies of the signal as without tssx; a child's stack overflow reaches its handler
 * on its alternate stack (as Rust's runtime catches one).
 *
 *   badpages server PATH / badpages client PATH
 *
 * Not here: reads or writes whose fault falls after the first of several of the writer's
 * messages (the kernel counts whole messages of up to about 36 KiB, the hook its ring
 * transfers; see the hook's iov.rs).
 */
#include "conform.h"

#include <setjmp.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/mman.h>
#include <sys/uio.h>

#define PAGE 4096
#define QUEUED 1000 /* bytes the client writes for the reads */
#define GOOD 100    /* good bytes before the bad page */

/* Where the scenario maps its pages: far below where the kernel places mappings on its own
 * (top-down from under the stack), so that a page unmapped here stays unmapped. */
static char *volatile next_place = (char *)0x5e0000000000ull; /* volatile: kept across siglongjmp */

static char *map_here(size_t len, int prot, int flags, int fd) {
    char *p = mmap(next_place, len, prot, flags | MAP_FIXED_NOREPLACE, fd, 0);
    CHECK(p == next_place);
    next_place += len + 16 * PAGE;
    return p;
}

/* A buffer of GOOD bytes whose next page is PROT_NONE (`unmap`: not mapped at all). */
static char *before_bad_page(int unmap) {
    char *p = map_here(2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    if (unmap) CHECK(munmap(p + PAGE, PAGE) == 0);
    else CHECK(mprotect(p + PAGE, PAGE, PROT_NONE) == 0);
    for (int i = 0; i < PAGE; i++) p[i] = (char)('a' + i % 26);
    return p + PAGE - GOOD;
}

/* A page that is not mapped (mapped, then unmapped). */
static char *unmapped_page(void) {
    char *p = map_here(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    CHECK(munmap(p, PAGE) == 0);
    return p;
}

static char *readonly_page(void) { return map_here(PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1); }

/* A shared mapping of an empty file: touching it is SIGBUS (the kernel's copy: EFAULT). */
static char *past_end_of_file(void) {
    int fd = memfd_create("badpages", MFD_CLOEXEC);
    CHECK(fd >= 0);
    char *p = map_here(PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd);
    close(fd);
    return p;
}

/* Waits until `n` bytes are queued on fd. */
static void wait_queued(int fd, int n) {
    for (;;) {
        int q = 0;
        CHECK(ioctl(fd, FIONREAD, &q) == 0);
        if (q >= n) return;
        wait_ready(fd, POLLIN);
        usleep(1000);
    }
}

/* sendmsg of `n` bytes at `data` with one fd (SCM_RIGHTS). */
static long send_with_fd(int fd, const void *data, size_t n, int passed) {
    struct iovec v = {(void *)data, n};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = {.msg_iov = &v, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &passed, sizeof passed);
    return sendmsg(fd, &m, 0);
}

/* recvmsg of up to `n` bytes into `data` with room for 4 fds: the count, and the fds received
 * (closed) in *fds. */
static long recv_with_fds(int fd, void *data, size_t n, int *fds) {
    struct iovec v = {data, n};
    union {
        char buf[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr m = {.msg_iov = &v, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    long r = recvmsg(fd, &m, 0);
    *fds = 0;
    if (r >= 0)
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                for (int i = 0; i < k; i++) {
                    int got;
                    memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
                    close(got);
                }
                *fds += k;
            }
    return r;
}

/* --- the application's own faults ------------------------------------------------------- */

static sigjmp_buf jump;
static char *volatile fault_at;
static stack_t alt;
static volatile int handled, on_alt_stack, addr_matches, second_ran;

static void first_handler(int sig, siginfo_t *si, void *ctx) {
    (void)ctx;
    char here;
    handled = sig;
    addr_matches = si->si_addr == (void *)fault_at;
    on_alt_stack = &here >= (char *)alt.ss_sp && &here < (char *)alt.ss_sp + alt.ss_size;
    siglongjmp(jump, 1);
}

static void second_handler(int sig) {
    second_ran = sig;
    siglongjmp(jump, 1);
}

static void install_first_handler(void) {
    alt.ss_sp = malloc(1 << 16);
    alt.ss_size = 1 << 16;
    alt.ss_flags = 0;
    CHECK(alt.ss_sp != NULL && sigaltstack(&alt, NULL) == 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = first_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGSEGV, &sa, NULL) == 0);
}

/* Writes one byte at `p` (a fault the compiler cannot remove). */
static void poke(char *p) { *(volatile char *)p = 1; }

/* A child that sets `sig` to `disposition`, then writes at `p`: how it ended. */
static void child_faults(int c, int sig, void (*disposition)(int), char *p, const char *what) {
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(c);
        signal(sig, disposition);
        poke(p);
        _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (WIFSIGNALED(status)) say("%s: child killed by signal %d", what, WTERMSIG(status));
    else say("%s: child exited %d", what, WEXITSTATUS(status));
}

/* A stack overflow, caught on an alternate stack (as Rust's runtime does): the child exits 42. */
static volatile int keep_going = 1;
static void overflow_handler(int sig) {
    (void)sig;
    _exit(42);
}
static int recurse(int n) {
    volatile char pad[1024];
    pad[0] = (char)n;
    if (keep_going) return recurse(n + 1) + pad[0];
    return pad[0];
}
static void child_overflows(int c) {
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(c);
        stack_t st = {.ss_sp = malloc(1 << 16), .ss_size = 1 << 16, .ss_flags = 0};
        CHECK(st.ss_sp != NULL && sigaltstack(&st, NULL) == 0);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = overflow_handler;
        sa.sa_flags = SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        CHECK(sigaction(SIGSEGV, &sa, NULL) == 0);
        recurse(0);
        _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (WIFSIGNALED(status)) say("stack overflow: child killed by signal %d", WTERMSIG(status));
    else say("stack overflow: child exited %d", WEXITSTATUS(status));
}

static void own_faults(int c) {
    say("-- the application's own faults");
    fault_at = unmapped_page();
    if (sigsetjmp(jump, 1) == 0) poke(fault_at);
    say("first handler: signal %d, si_addr the page: %s, on the alternate stack: %s", handled,
        addr_matches ? "yes" : "no", on_alt_stack ? "yes" : "no");
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = second_handler;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGSEGV, &sa, &old) == 0);
    say("old action: the first handler: %s, SA_SIGINFO|SA_ONSTACK: %s",
        old.sa_sigaction == first_handler ? "yes" : "no",
        (old.sa_flags & (SA_SIGINFO | SA_ONSTACK)) == (SA_SIGINFO | SA_ONSTACK) ? "yes" : "no");
    if (sigsetjmp(jump, 1) == 0) poke(readonly_page());
    say("second handler: signal %d", second_ran);
    child_faults(c, SIGSEGV, SIG_DFL, unmapped_page(), "SIGSEGV SIG_DFL");
    child_faults(c, SIGSEGV, SIG_IGN, unmapped_page(), "SIGSEGV SIG_IGN");
    child_faults(c, SIGBUS, SIG_DFL, past_end_of_file(), "SIGBUS SIG_DFL");
    child_overflows(c);
}

/* --- the scenario ------------------------------------------------------------------------ */

static void server(const char *path) {
    install_first_handler();
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    char buf[2 * QUEUED];
    char *tail = before_bad_page(0), *gap = before_bad_page(1);
    char *hole = unmapped_page(), *ro = readonly_page(), *bus = past_end_of_file();

    say("-- reads into bad pages, %d bytes queued (one write)", QUEUED);
    send_byte(c, 'r');
    wait_queued(c, QUEUED);
    SHOW("read, PROT_NONE after 100 bytes", read(c, tail, QUEUED));
    SHOW("read, unmapped after 100 bytes", read(c, gap, QUEUED));
    SHOW("recv MSG_PEEK, PROT_NONE after 100 bytes", recv(c, tail, QUEUED, MSG_PEEK));
    SHOW("recv MSG_WAITALL, unmapped after 100 bytes", recv(c, gap, QUEUED, MSG_WAITALL));
    SHOW("recvfrom, PROT_NONE after 100 bytes", recvfrom(c, tail, QUEUED, 0, NULL, NULL));
    struct iovec iov[2] = {{buf, 10}, {tail, QUEUED - 10}};
    SHOW("readv 10 good + PROT_NONE after 100", readv(c, iov, 2));
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
    SHOW("recvmsg 10 good + PROT_NONE after 100", recvmsg(c, &m, 0));
    SHOW("recvmsg MSG_PEEK, the same", recvmsg(c, &m, MSG_PEEK));
    SHOW("read into an unmapped page", read(c, hole, 10));
    SHOW("read into a read-only page", read(c, ro, 10));
    SHOW("read into a file mapping past its end", read(c, bus, 10));
    SHOW("readv, the iovec array in an unmapped page", readv(c, (struct iovec *)hole, 1));
    SHOW("recvmsg, the msghdr in an unmapped page", recvmsg(c, (struct msghdr *)hole, 0));
    SHOW("recvmmsg, the vector in an unmapped page", recvmmsg(c, (struct mmsghdr *)hole, 1, 0, NULL));
    struct iovec mv = {buf, 10};
    struct mmsghdr mm = {.msg_hdr = {.msg_iov = &mv, .msg_iovlen = 1}};
    SHOW("recvmmsg, the timeout in an unmapped page", recvmmsg(c, &mm, 1, 0, (struct timespec *)hole));
    struct iovec mbad = {tail, QUEUED};
    struct mmsghdr mm2 = {.msg_hdr = {.msg_iov = &mbad, .msg_iovlen = 1}};
    SHOW("recvmmsg, PROT_NONE after 100 bytes", recvmmsg(c, &mm2, 1, 0, NULL));
    SHOW("poll, the array in an unmapped page", poll((struct pollfd *)hole, 1, 0));
    struct pollfd *rop = (struct pollfd *)map_here(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    rop->fd = c;
    rop->events = POLLIN;
    CHECK(mprotect(rop, PAGE, PROT_READ) == 0);
    SHOW("poll, the array read-only", poll(rop, 1, 0));
    /* (Not ppoll with a timeout in a bad page: glibc's ppoll reads it itself, a SIGSEGV in
     * libc with or without tssx.) */
    /* select: a set in an unmapped page (the kernel's get_fd_set: EFAULT before it waits), a
     * read-only set (EFAULT when the result is written back); the data is queued, so a good
     * set is ready at once. (Not a timeout in a bad page: glibc's select converts it itself, a
     * SIGSEGV in libc with or without tssx.) */
    SHOW("select, the read set in an unmapped page", select(c + 1, (fd_set *)hole, NULL, NULL, NULL));
    fd_set *ros = (fd_set *)map_here(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    FD_SET(c, ros);
    CHECK(mprotect(ros, PAGE, PROT_READ) == 0);
    SHOW("select, the read set read-only", select(c + 1, ros, NULL, NULL, NULL));
    fd_set good;
    FD_ZERO(&good);
    FD_SET(c, &good);
    struct timespec zero = {0, 0};
    SHOW("pselect, the read set in an unmapped page", pselect(c + 1, (fd_set *)hole, NULL, NULL, &zero, NULL));
    long sr = SHOW("select, good", select(c + 1, &good, NULL, NULL, NULL));
    if (sr > 0) say("  ready %d", FD_ISSET(c, &good));
    /* epoll_wait: the events array in an unmapped or a read-only page (EFAULT once an event is
     * there to give: the data is queued), then a good one. */
    int ep = epoll_create1(0);
    CHECK(ep >= 0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) == 0);
    SHOW("epoll_wait, the array in an unmapped page", epoll_wait(ep, (struct epoll_event *)hole, 4, 0));
    struct epoll_event *roe = (struct epoll_event *)map_here(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    CHECK(mprotect(roe, PAGE, PROT_READ) == 0);
    SHOW("epoll_wait, the array read-only", epoll_wait(ep, roe, 4, 0));
    struct epoll_event evs[4];
    long er = SHOW("epoll_wait, good", epoll_wait(ep, evs, 4, 0));
    if (er > 0) say("  event %llu", (unsigned long long)evs[0].data.u64);
    close(ep);
    struct pollfd pf2 = {.fd = c, .events = POLLIN};
    long pr = SHOW("poll, good", poll(&pf2, 1, 0));
    if (pr > 0) say("  revents %s", pollstr(pf2.revents));
    int q = 0;
    CHECK(ioctl(c, FIONREAD, &q) == 0);
    say("FIONREAD %d (nothing was taken)", q);
    SHOW_DATA("read the good 100 bytes", tail, read(c, tail, GOOD));
    size_t n = read_full(c, buf, QUEUED - GOOD);
    say("read the rest: %zu bytes, %s", n, quoted(buf + n - 8, 8));

    say("-- control messages (SCM_RIGHTS)");
    send_byte(c, 'c');
    wait_queued(c, 10);
    int fds = -1;
    SHOW("recvmsg with fds into an unmapped page", recv_with_fds(c, hole, 10, &fds));
    /* (A buffer of its own: the kernel leaves the 4 bytes before the bad page written, the hook
     * writes none of a message with control messages; what a failed call leaves in a buffer is
     * not part of its answer.) */
    SHOW("recvmsg with fds, PROT_NONE after 4 bytes", recv_with_fds(c, before_bad_page(0) + GOOD - 4, 10, &fds));
    long got = SHOW_DATA("recvmsg with fds", buf, recv_with_fds(c, buf, 10, &fds));
    say("  %d fd(s)", got > 0 ? fds : -1);
    int p[2];
    CHECK(pipe(p) == 0);
    SHOW("sendmsg with an fd, PROT_NONE after 100 bytes", send_with_fd(c, tail, QUEUED, p[0]));
    SHOW("sendmsg with an fd from an unmapped page", send_with_fd(c, hole, 10, p[0]));
    close(p[0]);
    close(p[1]);

    say("-- writes from bad pages");
    SHOW("write, PROT_NONE after 100 bytes", write(c, tail, QUEUED));
    SHOW("write, unmapped after 100 bytes", write(c, gap, QUEUED));
    SHOW("send, PROT_NONE after 100 bytes", send(c, tail, QUEUED, 0));
    SHOW("sendto, unmapped after 100 bytes", sendto(c, gap, QUEUED, 0, NULL, 0));
    struct iovec wiov[2] = {{"ab", 2}, {tail, QUEUED}};
    SHOW("writev \"ab\" + PROT_NONE after 100", writev(c, wiov, 2));
    struct msghdr wm = {.msg_iov = wiov, .msg_iovlen = 2};
    SHOW("sendmsg \"ab\" + PROT_NONE after 100", sendmsg(c, &wm, 0));
    SHOW("write from an unmapped page", write(c, hole, 10));
    SHOW("write from a file mapping past its end", write(c, bus, 10));
    SHOW("writev, the iovec array in an unmapped page", writev(c, (struct iovec *)hole, 1));
    SHOW("sendmsg, the msghdr in an unmapped page", sendmsg(c, (struct msghdr *)hole, 0));
    SHOW("sendmmsg, the vector in an unmapped page", sendmmsg(c, (struct mmsghdr *)hole, 1, 0));
    struct iovec sbad = {tail, QUEUED};
    struct mmsghdr sm2 = {.msg_hdr = {.msg_iov = &sbad, .msg_iovlen = 1}};
    SHOW("sendmmsg, PROT_NONE after 100 bytes", sendmmsg(c, &sm2, 1, 0));
    SHOW("write the good 100 bytes", write(c, tail, GOOD));
    SHOW("write from a read-only page", write(c, ro, 3));
    write_str(c, "END");

    say("-- the connection still works");
    expect_str(c, "ping");
    write_str(c, "pong");
    expect_byte(c, 'f');

    own_faults(c);
    SHOW("close", close(c));
}

static void client(const char *path) {
    int fd = connect_to(path);
    char buf[2 * QUEUED];
    expect_byte(fd, 'r');
    for (int i = 0; i < QUEUED; i++) buf[i] = (char)('A' + i % 26);
    write_full(fd, buf, QUEUED);
    expect_byte(fd, 'c');
    int p[2];
    CHECK(pipe(p) == 0);
    CHECK(send_with_fd(fd, "fdfdfdfdfd", 10, p[0]) == 10);
    close(p[0]);
    close(p[1]);
    /* What the bad writes delivered: the good 100 bytes, 3 zero bytes and "END", nothing more. */
    size_t n = read_full(fd, buf, GOOD + 6);
    say("received %zu bytes: %s", n, quoted(buf, (long)n));
    say("  ending %s", quoted(buf + n - 10, 10));
    SHOW("recv MSG_DONTWAIT (nothing more)", recv(fd, buf, sizeof buf, MSG_DONTWAIT));
    write_str(fd, "ping");
    expect_str(fd, "pong");
    say("pong");
    send_byte(fd, 'f');
    SHOW_DATA("read until the server closes", buf, read(fd, buf, sizeof buf));
    SHOW("close", close(fd));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
