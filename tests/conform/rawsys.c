/*
 * syscall(2) on a connected socket, mixed with the libc calls: write/sendto/writev/sendmsg
 * and read/recvfrom/readv/recvmsg through syscall() between ordinary calls, poll, ioctl
 * FIONREAD, fcntl F_SETFL and F_DUPFD, dup, shutdown and close through syscall(), a raw
 * syscall on an fd that is not a socket, and the closed socket's number reused by a pipe.
 *
 *   rawsys server PATH / rawsys client PATH
 *
 * Each end prints what it observed; reads of more than one byte use MSG_WAITALL (or wait for
 * the bytes first), so the transcript does not depend on timing.
 */
#include "conform.h"

#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <sys/uio.h>

/* syscall() results: "-1 ENAME" or the number. */
#define RAW(what, ...) SHOW(what, syscall(__VA_ARGS__))
#define RAW_DATA(what, buf, ...) SHOW_DATA(what, buf, syscall(__VA_ARGS__))

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    char buf[64];

    /* The client sends "ABCDEFGHI" through nine different calls. */
    SHOW_DATA("read 1", buf, read(c, buf, 1));
    RAW_DATA("syscall read 1", buf, SYS_read, c, buf, 1);
    RAW_DATA("syscall recvfrom 2 MSG_WAITALL", buf, SYS_recvfrom, c, buf, 2, MSG_WAITALL, NULL, NULL);
    SHOW_DATA("recv 1", buf, recv(c, buf, 1, 0));
    struct iovec iov[2] = {{buf, 1}, {buf + 1, 1}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
    RAW_DATA("syscall recvmsg 2 MSG_WAITALL", buf, SYS_recvmsg, c, &msg, MSG_WAITALL);
    struct iovec one = {buf, 1};
    RAW_DATA("syscall readv 1", buf, SYS_readv, c, &one, 1);
    RAW_DATA("syscall preadv2 1 at offset -1", buf, SYS_preadv2, c, &one, 1, -1L, 0L, 0);
    RAW_DATA("syscall preadv2 1 at offset 0", buf, SYS_preadv2, c, &one, 1, 0L, 0L, 0);
    RAW_DATA("syscall recvfrom MSG_DONTWAIT (empty)", buf, SYS_recvfrom, c, buf, sizeof buf, MSG_DONTWAIT, NULL, NULL);
    send_byte(c, 'r'); /* all read */

    /* "12345" arrives: peek it whole, then FIONREAD and poll through syscall(). */
    RAW_DATA("syscall recvfrom 5 MSG_PEEK|MSG_WAITALL", buf, SYS_recvfrom, c, buf, 5, MSG_PEEK | MSG_WAITALL, NULL, NULL);
    int avail = -1;
    RAW("syscall ioctl FIONREAD", SYS_ioctl, c, FIONREAD, &avail);
    say("  FIONREAD says %d", avail);
    struct pollfd p = {.fd = c, .events = POLLIN | POLLOUT};
    RAW("syscall poll", SYS_poll, &p, 1, 0);
    say("  revents %s", pollstr(p.revents));
    struct timespec zero = {0, 0}, five = {5, 0};
    sigset_t mask;
    sigemptyset(&mask);
    p.revents = 0;
    RAW("syscall ppoll", SYS_ppoll, &p, 1, &zero, NULL, 8);
    say("  revents %s", pollstr(p.revents));
    RAW("syscall ppoll with a 4-byte signal set", SYS_ppoll, &p, 1, &zero, &mask, 4);
    RAW("syscall ppoll 5 s with a mask", SYS_ppoll, &p, 1, &five, &mask, 8);
    say("  time left written back, between 4 and 5 s: %s", five.tv_sec == 4 && five.tv_nsec > 0 ? "yes" : "no");
    fd_set r;
    FD_ZERO(&r);
    FD_SET(c, &r);
    RAW("syscall pselect6", SYS_pselect6, c + 1, &r, NULL, NULL, &zero, NULL);
    say("  readable: %s", FD_ISSET(c, &r) ? "yes" : "no");
    struct timeval tv = {0, 0};
    FD_SET(c, &r);
    RAW("syscall select", SYS_select, c + 1, &r, NULL, NULL, &tv);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7}, evs[4];
    RAW("syscall epoll_ctl ADD", SYS_epoll_ctl, ep, EPOLL_CTL_ADD, c, &ev);
    memset(evs, 0, sizeof evs);
    RAW("syscall epoll_wait", SYS_epoll_wait, ep, evs, 4, 0);
    say("  events 0x%x data %llu", evs[0].events, (unsigned long long)evs[0].data.u64);
    RAW("syscall epoll_pwait", SYS_epoll_pwait, ep, evs, 4, 0, &mask, 8);
    RAW("syscall epoll_pwait with a 4-byte signal set", SYS_epoll_pwait, ep, evs, 4, 0, &mask, 4);
    CHECK(close(ep) == 0);
    RAW("syscall fcntl F_SETFL O_NONBLOCK", SYS_fcntl, c, F_SETFL, O_NONBLOCK);
    say("  F_GETFL says O_NONBLOCK: %s", fcntl(c, F_GETFL) & O_NONBLOCK ? "yes" : "no");
    long d = RAW("syscall fcntl F_DUPFD 200", SYS_fcntl, c, F_DUPFD, 200);
    RAW_DATA("syscall read 5 through the dup", buf, SYS_read, d, buf, 5);
    RAW_DATA("syscall read (empty, non-blocking)", buf, SYS_read, c, buf, sizeof buf);
    RAW("syscall close the dup", SYS_close, d);
    RAW("syscall fcntl F_SETFL 0", SYS_fcntl, c, F_SETFL, 0);
    send_byte(c, 'n');

    /* The client shuts down its side through syscall(): data, then EOF. */
    RAW_DATA("syscall recvfrom 4 MSG_WAITALL", buf, SYS_recvfrom, c, buf, 4, MSG_WAITALL, NULL, NULL);
    RAW_DATA("syscall read after the shutdown", buf, SYS_read, c, buf, sizeof buf);
    RAW("syscall write after its shutdown", SYS_write, c, "back", 4);
    /* The client closes through syscall(): EOF again, and nothing of its pipe arrives. */
    SHOW_DATA("read after its close", buf, read(c, buf, sizeof buf));
    RAW("syscall close", SYS_close, c);
    RAW("syscall close again", SYS_close, c);
}

static void client(const char *path) {
    int fd = connect_to(path);
    char buf[64];

    SHOW("write A", write(fd, "A", 1));
    RAW("syscall write B", SYS_write, fd, "B", 1);
    RAW("syscall sendto C", SYS_sendto, fd, "C", 1, 0, NULL, 0);
    SHOW("send D", send(fd, "D", 1, 0));
    struct iovec iov[2] = {{"E", 1}, {"F", 1}};
    RAW("syscall writev EF", SYS_writev, fd, iov, 2);
    struct iovec g = {"G", 1};
    struct msghdr msg = {.msg_iov = &g, .msg_iovlen = 1};
    RAW("syscall sendmsg G", SYS_sendmsg, fd, &msg, 0);
    SHOW("write H", write(fd, "H", 1));
    struct iovec i = {"I", 1};
    RAW("syscall pwritev2 I at offset -1", SYS_pwritev2, fd, &i, 1, -1L, 0L, 0);
    RAW("syscall sendto with an address", SYS_sendto, fd, "x", 1, 0, &(struct sockaddr_un){.sun_family = AF_UNIX}, sizeof(struct sockaddr_un));
    expect_byte(fd, 'r');

    RAW("syscall write 12345", SYS_write, fd, "12345", 5);
    expect_byte(fd, 'n');

    long d = syscall(SYS_dup, fd);
    say("syscall dup -> %s", d >= 0 ? "a new fd" : rcstr(d, errno));
    RAW("syscall write wxyz through the dup", SYS_write, d, "wxyz", 4);
    RAW("syscall close the dup", SYS_close, d);
    RAW("syscall shutdown SHUT_WR", SYS_shutdown, fd, SHUT_WR);
    RAW("syscall write after shutdown", SYS_write, fd, "late", 4);
    RAW_DATA("syscall recvfrom 4 MSG_WAITALL", buf, SYS_recvfrom, fd, buf, 4, MSG_WAITALL, NULL, NULL);

    /* A raw syscall on fds that are not sockets. */
    int p[2];
    CHECK(pipe(p) == 0);
    RAW("syscall write to a pipe", SYS_write, p[1], "pipe", 4);
    RAW_DATA("syscall read from the pipe", buf, SYS_read, p[0], buf, sizeof buf);
    RAW("syscall write to a bad fd", SYS_write, 1000, "x", 1);
    say("syscall getpid is getpid: %s", syscall(SYS_getpid) == getpid() ? "yes" : "no");
    CHECK(close(p[0]) == 0 && close(p[1]) == 0);

    /* Closed through syscall(): the number is free, and a pipe that gets it is a pipe. */
    RAW("syscall close", SYS_close, fd);
    SHOW("F_GETFD on its number", fcntl(fd, F_GETFD));
    CHECK(pipe(p) == 0);
    if (p[0] != fd && p[1] != fd) die("the pipe did not get the closed socket's number");
    RAW("syscall write into the pipe", SYS_write, p[1], "reused", 6);
    RAW_DATA("syscall read from the pipe", buf, SYS_read, p[0], buf, sizeof buf);
    CHECK(close(p[0]) == 0 && close(p[1]) == 0);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    return run_role(argc, argv, server, client);
}
