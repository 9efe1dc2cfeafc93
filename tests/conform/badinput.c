/*
 * Bad input gets the kernel's answer, never a signal: NULL and (void*)1 buffers, iovec counts
 * out of range (-1, 1025), negative iovec lengths, NULL iovec arrays and msghdrs, ioctl
 * FIONREAD into a misaligned, NULL or (void*)1 int, recvfrom with an unwritable length,
 * sendto/sendmsg with a destination address on a connected stream socket (EISCONN), and bad
 * buffers after shutdown (EPIPE first).
 *
 *   badinput server PATH / badinput client PATH
 *
 * Not here (the hook cannot see it without a system call per call; see the README): a buffer
 * elsewhere in the address space that is not mapped, or runs into an unmapped page.
 */
#include "conform.h"

#include <sys/ioctl.h>
#include <sys/uio.h>

/* Bad pointers the compiler cannot see through (it would refuse a literal NULL buffer). */
static void *volatile null_ptr = NULL;
static void *volatile one_ptr = (void *)1;
#define NUL_ (null_ptr)
#define ONE (one_ptr)
/* iovec counts out of range, hidden from the compiler's bounds checks likewise. */
static volatile int minus_one = -1;
static volatile int too_many = 1025;

static void fionread_misaligned(int fd) {
    uint64_t words[2] = {0, 0};
    char *odd = (char *)words + 1;
    long r = SHOW("ioctl FIONREAD misaligned", ioctl(fd, FIONREAD, odd));
    int v;
    memcpy(&v, odd, sizeof v);
    if (r == 0) say("  value %d", v);
}

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    char buf[128], a[4];

    say("-- reads, nothing queued");
    SHOW("recv NULL 16 MSG_DONTWAIT", recv(c, NUL_, 16, MSG_DONTWAIT));
    SHOW("recv (void*)1 16 MSG_DONTWAIT", recv(c, ONE, 16, MSG_DONTWAIT));
    SHOW("ioctl FIONREAD NULL", ioctl(c, FIONREAD, NUL_));
    fionread_misaligned(c);

    say("-- reads, data queued");
    send_byte(c, 'g');
    wait_ready(c, POLLIN);
    SHOW("read NULL 16", read(c, NUL_, 16));
    SHOW("read (void*)1 16", read(c, ONE, 16));
    SHOW("recv NULL 16 MSG_PEEK", recv(c, NUL_, 16, MSG_PEEK));
    SHOW("recv (void*)1 16 MSG_WAITALL", recv(c, ONE, 16, MSG_WAITALL));
    SHOW("read NULL 0", read(c, NUL_, 0));
    struct iovec iov[2] = {{a, 2}, {0, 8}};
    iov[1].iov_base = NUL_;
    SHOW("readv iovcnt -1", readv(c, iov, minus_one));
    SHOW("readv iovcnt 1025", readv(c, iov, too_many));
    SHOW("readv NULL array, iovcnt 1", readv(c, NUL_, 1));
    SHOW("readv NULL array, iovcnt 0", readv(c, NUL_, 0));
    SHOW("readv good + NULL", readv(c, iov, 2));
    struct iovec neg[2] = {{a, 2}, {buf, (size_t)-1}};
    SHOW("readv negative length", readv(c, neg, 2));
    SHOW("recvmsg NULL msghdr", recvmsg(c, NUL_, 0));
    SHOW("recvmsg (void*)1 msghdr", recvmsg(c, ONE, 0));
    struct iovec one_iov = {buf, sizeof buf};
    struct msghdr m = {.msg_iov = &one_iov, .msg_iovlen = (size_t)too_many};
    SHOW("recvmsg msg_iovlen 1025", recvmsg(c, &m, 0));
    m.msg_iov = NUL_;
    m.msg_iovlen = 1;
    SHOW("recvmsg NULL msg_iov", recvmsg(c, &m, 0));
    SHOW("ioctl FIONREAD NULL", ioctl(c, FIONREAD, NUL_));
    SHOW("ioctl FIONREAD (void*)1", ioctl(c, FIONREAD, ONE));
    fionread_misaligned(c);
    SHOW_DATA("read 128 (all still there)", buf, read(c, buf, sizeof buf));

    say("-- writes");
    SHOW("write NULL 4", write(c, NUL_, 4));
    SHOW("write (void*)1 4", write(c, ONE, 4));
    SHOW("send NULL 0", send(c, NUL_, 0, 0));
    struct iovec wiov[2] = {{"ab", 2}, {ONE, 3}};
    SHOW("writev iovcnt -1", writev(c, wiov, minus_one));
    SHOW("writev iovcnt 1025", writev(c, wiov, too_many));
    SHOW("writev NULL array, iovcnt 1", writev(c, NUL_, 1));
    SHOW("writev good + (void*)1", writev(c, wiov, 2));
    SHOW("sendmsg NULL msghdr", sendmsg(c, NUL_, 0));
    struct iovec z = {"z", 1};
    struct msghdr sm = {.msg_iov = &z, .msg_iovlen = (size_t)too_many};
    SHOW("sendmsg msg_iovlen 1025", sendmsg(c, &sm, 0));
    sm.msg_iovlen = 1;
    socklen_t alen;
    struct sockaddr_un addr = address(path, &alen);
    SHOW("sendto with the listener's address", sendto(c, "x", 1, 0, (struct sockaddr *)&addr, alen));
    SHOW("sendto address length 0", sendto(c, "y", 1, 0, (struct sockaddr *)&addr, 0));
    SHOW("sendto address length 200", sendto(c, "x", 1, 0, (struct sockaddr *)&addr, 200));
    SHOW("sendto (void*)1 address", sendto(c, "x", 1, 0, ONE, 16));
    SHOW("sendto NULL address, length 16", sendto(c, "w", 1, 0, NUL_, 16));
    sm.msg_name = &addr;
    sm.msg_namelen = alen;
    SHOW("sendmsg with an address", sendmsg(c, &sm, 0));
    sm.msg_name = NULL;
    SHOW("sendmsg without", sendmsg(c, &sm, 0));
    send_byte(c, 'g');

    say("-- recvfrom with an unwritable address length");
    wait_ready(c, POLLIN);
    struct sockaddr_un from;
    SHOW("recvfrom len (void*)1", recvfrom(c, buf, sizeof buf, 0, (struct sockaddr *)&from, ONE));
    SHOW("recv MSG_DONTWAIT after", recv(c, buf, sizeof buf, MSG_DONTWAIT));

    say("-- after shutdown");
    signal(SIGPIPE, SIG_IGN);
    SHOW("shutdown SHUT_WR", shutdown(c, SHUT_WR));
    SHOW("send NULL 4", send(c, NUL_, 4, MSG_NOSIGNAL));
    SHOW("write (void*)1 4", write(c, ONE, 4));
    SHOW("sendto with the listener's address", sendto(c, "x", 1, 0, (struct sockaddr *)&addr, alen));
    SHOW_DATA("read (until the client closes)", buf, read(c, buf, sizeof buf));
    SHOW("read NULL 16 at EOF", read(c, NUL_, 16));
}

static void client(const char *path) {
    int fd = connect_to(path);
    char buf[16];
    expect_byte(fd, 'g');
    SHOW("write", write(fd, "hello", 5));
    size_t n = read_full(fd, buf, 4);
    say("read %s", quoted(buf, (long)n));
    SHOW("send", send(fd, "q", 1, 0));
    SHOW_DATA("read NULL 16 at EOF", buf, read(fd, NUL_, 16));
    SHOW_DATA("recv (void*)1 16 at EOF", buf, recv(fd, ONE, 16, 0));
    SHOW("close", close(fd));
}

int main(int argc, char **argv) {
    return run_role(argc, argv, server, client);
}
