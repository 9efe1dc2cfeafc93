/*
 * A connection handed back to the kernel (the client turns SO_PASSCRED on) while its server
 * waits in epoll_wait: every message after it arrives, with the fds it carries.
 *
 *   passcred_epoll server PATH [et] / passcred_epoll client PATH
 *
 * With `et` the server's registration is edge-triggered and it reads until EAGAIN.
 */
#include "conform.h"

#include <sys/epoll.h>
#include <sys/uio.h>

static int edge;

static void server(const char *path) {
    int lfd = listen_on(path);
    int c = accept_one(lfd);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | (edge ? EPOLLET : 0), .data.fd = c};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) == 0);
    for (;;) {
        struct epoll_event out;
        int n = epoll_wait(ep, &out, 1, 10000);
        if (n == 0) {
            say("epoll_wait timed out");
            break;
        }
        CHECK(n == 1);
    again:;
        char buf[64];
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(int) * 2) + CMSG_SPACE(sizeof(struct ucred))];
        } u;
        struct iovec iov = {buf, sizeof buf};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b};
        ssize_t got = recvmsg(c, &m, MSG_DONTWAIT);
        if (got < 0 && errno == EAGAIN) continue;
        if (got <= 0) {
            say("recvmsg -> %s", rcstr(got, errno));
            break;
        }
        int fds = 0;
        for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h))
            if (h->cmsg_type == SCM_RIGHTS) {
                int k = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                int f[2];
                memcpy(f, CMSG_DATA(h), sizeof(int) * k);
                for (int i = 0; i < k; i++) close(f[i]);
                fds += k;
            }
        say("%s with %d fds", quoted(buf, got), fds);
        CHECK(write(c, buf, (size_t)got) == got);
        if (edge) goto again;
    }
    close(c);
}

static void client(const char *path) {
    int fd = connect_to(path);
    char buf[64];
    for (int i = 0; i < 6; i++) {
        char msg[16];
        int len = snprintf(msg, sizeof msg, "msg-%d", i);
        if (i == 2) {
            int one = 1;
            SHOW("setsockopt SO_PASSCRED", setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one));
        }
        struct iovec iov = {msg, (size_t)len};
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(int))];
        } u;
        memset(&u, 0, sizeof u);
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
        if (i % 2 == 1) {
            m.msg_control = u.b;
            m.msg_controllen = sizeof u.b;
            struct cmsghdr *h = CMSG_FIRSTHDR(&m);
            h->cmsg_level = SOL_SOCKET;
            h->cmsg_type = SCM_RIGHTS;
            h->cmsg_len = CMSG_LEN(sizeof(int));
            int p = 0;
            memcpy(CMSG_DATA(h), &p, sizeof p);
        }
        CHECK(sendmsg(fd, &m, 0) == len);
        size_t got = read_full(fd, buf, (size_t)len);
        say("echo %s", quoted(buf, (long)got));
    }
    close(fd);
}

int main(int argc, char **argv) {
    edge = argc > 3 && strcmp(argv[3], "et") == 0;
    return run_role(argc, argv, server, client);
}
