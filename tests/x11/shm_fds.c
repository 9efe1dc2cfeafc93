/* An X client that passes fds both ways over its X connection (MIT-SHM 1.2, as cairo, GTK and
 * Mesa do): ShmAttachFd sends a memfd to the server with SCM_RIGHTS, ShmCreateSegment gets one
 * back from it. Each round draws a pattern through a segment the client passed, reads it back
 * with a core GetImage and through a segment the server passed, and checks both against the
 * pattern. Before the first fd, 200 round trips make the connection a long conversation (under
 * tssx it migrates onto the rings first).
 *
 *   shm_fds ROUNDS      (DISPLAY names the server)
 *
 * Prints one summary line; exits 1 on any mismatch or X error. Built by
 * tests/tests/apps/x11.rs with `cc shm_fds.c -lxcb`; no tssx code in it. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xcb/xcb.h>
#include <xcb/xcbext.h>

enum { W = 64, H = 64, SIZE = W * H * 4 };
enum { QUERY_VERSION = 0, DETACH = 2, PUT_IMAGE = 3, GET_IMAGE = 4, ATTACH_FD = 6, CREATE_SEGMENT = 7 };

static xcb_extension_t shm = { "MIT-SHM", 0 };

static void die(const char *what) {
    fprintf(stderr, "shm_fds: %s\n", what);
    exit(1);
}

/* Sends one MIT-SHM request (`body`, `len` bytes, after the 4-byte header xcb fills in), with
 * `fd` if >= 0. */
static unsigned send_shm(xcb_connection_t *c, uint8_t minor, const void *body, size_t len, int has_reply, int fd, int reply_fds) {
    xcb_protocol_request_t req = { .count = 2, .ext = &shm, .opcode = minor, .isvoid = !has_reply };
    struct iovec parts[4];
    static const char pad[4];
    uint8_t request[64] = { 0 };
    if (len > sizeof request - 4)
        die("request too long");
    memcpy(request + 4, body, len);
    parts[2].iov_base = request;
    parts[2].iov_len = 4 + len;
    parts[3].iov_base = (char *)pad;
    parts[3].iov_len = -(4 + len) & 3;
    int flags = XCB_REQUEST_CHECKED | (reply_fds ? XCB_REQUEST_REPLY_FDS : 0);
    if (fd >= 0)
        return xcb_send_request_with_fds(c, flags, parts + 2, &req, 1, &fd);
    return xcb_send_request(c, flags, parts + 2, &req);
}

static void check_void(xcb_connection_t *c, unsigned seq, const char *what) {
    xcb_void_cookie_t cookie = { seq };
    xcb_generic_error_t *e = xcb_request_check(c, cookie);
    if (e) {
        fprintf(stderr, "shm_fds: %s: X error %d\n", what, e->error_code);
        exit(1);
    }
}

static void *reply(xcb_connection_t *c, unsigned seq, const char *what) {
    xcb_generic_error_t *e = NULL;
    void *r = xcb_wait_for_reply(c, seq, &e);
    if (!r) {
        fprintf(stderr, "shm_fds: %s: %s %d\n", what, e ? "X error" : "no reply", e ? e->error_code : 0);
        exit(1);
    }
    return r;
}

static void fill(uint32_t *px, unsigned round) {
    uint32_t x = 2166136261u ^ round;
    for (unsigned i = 0; i < W * H; i++) {
        x = x * 1664525u + 1013904223u;
        px[i] = x & 0xffffff;
    }
}

static int same(const uint32_t *a, const uint32_t *b) {
    for (unsigned i = 0; i < W * H; i++)
        if ((a[i] & 0xffffff) != (b[i] & 0xffffff))
            return 0;
    return 1;
}

int main(int argc, char **argv) {
    unsigned rounds = argc > 1 ? (unsigned)atoi(argv[1]) : 50;
    xcb_connection_t *c = xcb_connect(NULL, NULL);
    if (xcb_connection_has_error(c))
        die("cannot connect");
    xcb_screen_t *screen = xcb_setup_roots_iterator(xcb_get_setup(c)).data;
    if (screen->root_depth != 24)
        die("root depth is not 24 (run Xvfb with -screen 0 WxHx24)");
    /* A long conversation first. */
    for (int i = 0; i < 200; i++)
        free(reply(c, xcb_get_input_focus(c).sequence, "GetInputFocus"));
    const xcb_query_extension_reply_t *ext = xcb_get_extension_data(c, &shm);
    if (!ext || !ext->present)
        die("no MIT-SHM");
    uint8_t body[32] = { 0 };
    uint8_t *v = reply(c, send_shm(c, QUERY_VERSION, body, 0, 1, -1, 0), "ShmQueryVersion");
    uint16_t major, minor;
    memcpy(&major, v + 8, 2);
    memcpy(&minor, v + 10, 2);
    free(v);
    if (major < 1 || (major == 1 && minor < 2))
        die("MIT-SHM older than 1.2 (no fd passing)");

    xcb_pixmap_t pixmap = xcb_generate_id(c);
    xcb_gcontext_t gc = xcb_generate_id(c);
    check_void(c, xcb_create_pixmap_checked(c, 24, pixmap, screen->root, W, H).sequence, "CreatePixmap");
    check_void(c, xcb_create_gc_checked(c, gc, pixmap, 0, NULL).sequence, "CreateGC");
    uint32_t *want = malloc(SIZE);
    uint64_t sum = 0;
    unsigned put_ok = 0, core_ok = 0, got_ok = 0;
    for (unsigned round = 0; round < rounds; round++) {
        /* Client -> server: a memfd with the pattern, attached with ShmAttachFd. */
        int fd = memfd_create("shm_fds", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, SIZE) < 0)
            die("memfd");
        uint32_t *mine = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (mine == MAP_FAILED)
            die("mmap");
        fill(want, round);
        memcpy(mine, want, SIZE);
        uint32_t seg = xcb_generate_id(c);
        memset(body, 0, sizeof body);
        memcpy(body, &seg, 4); /* shmseg, read_only = 0 */
        check_void(c, send_shm(c, ATTACH_FD, body, 8, 0, fd, 0), "ShmAttachFd");
        close(fd); /* xcb closed its copy once sent; the server holds the segment now */
        /* ShmPutImage: drawable, gc, total w/h, src x/y/w/h, dst x/y, depth, format, send_event, pad, shmseg, offset. */
        uint8_t put[36] = { 0 };
        uint16_t wh[8] = { W, H, 0, 0, W, H, 0, 0 };
        memcpy(put, &pixmap, 4);
        memcpy(put + 4, &gc, 4);
        memcpy(put + 8, wh, 16);
        put[24] = 24;
        put[25] = XCB_IMAGE_FORMAT_Z_PIXMAP;
        memcpy(put + 28, &seg, 4);
        check_void(c, send_shm(c, PUT_IMAGE, put, 36, 0, -1, 0), "ShmPutImage");
        put_ok++;
        /* Read it back through the core protocol. */
        xcb_get_image_reply_t *img =
            reply(c, xcb_get_image(c, XCB_IMAGE_FORMAT_Z_PIXMAP, pixmap, 0, 0, W, H, ~0u).sequence, "GetImage");
        if (xcb_get_image_data_length(img) != SIZE)
            die("GetImage: unexpected size");
        core_ok += same((uint32_t *)xcb_get_image_data(img), want);
        free(img);
        check_void(c, send_shm(c, DETACH, &seg, 4, 0, -1, 0), "ShmDetach");
        munmap(mine, SIZE);

        /* Server -> client: a segment the server creates and passes back. */
        uint32_t seg2 = xcb_generate_id(c);
        uint32_t size = SIZE;
        memset(body, 0, sizeof body);
        memcpy(body, &seg2, 4);
        memcpy(body + 4, &size, 4); /* read_only = 0 */
        uint8_t *r = reply(c, send_shm(c, CREATE_SEGMENT, body, 12, 1, -1, 1), "ShmCreateSegment");
        if (r[1] != 1)
            die("ShmCreateSegment: no fd in the reply");
        int *fds = xcb_get_reply_fds(c, r, 32);
        int sfd = fds[0];
        free(r);
        uint32_t *theirs = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
        if (theirs == MAP_FAILED)
            die("mmap of the server's segment");
        close(sfd);
        memset(theirs, 0, SIZE);
        /* ShmGetImage: drawable, x, y, w, h, plane_mask, format, pad, shmseg, offset. */
        uint8_t get[28] = { 0 };
        int16_t xy[2] = { 0, 0 };
        uint16_t whg[2] = { W, H };
        uint32_t planes = ~0u;
        memcpy(get, &pixmap, 4);
        memcpy(get + 4, xy, 4);
        memcpy(get + 8, whg, 4);
        memcpy(get + 12, &planes, 4);
        get[16] = XCB_IMAGE_FORMAT_Z_PIXMAP;
        memcpy(get + 20, &seg2, 4);
        free(reply(c, send_shm(c, GET_IMAGE, get, 28, 1, -1, 0), "ShmGetImage"));
        got_ok += same(theirs, want);
        for (unsigned i = 0; i < W * H; i++)
            sum = sum * 31 + (theirs[i] & 0xffffff);
        munmap(theirs, SIZE);
        check_void(c, send_shm(c, DETACH, &seg2, 4, 0, -1, 0), "ShmDetach");
    }
    printf("%u rounds: ShmAttachFd+ShmPutImage %u, core GetImage matched %u, ShmCreateSegment+ShmGetImage matched %u, sum %016llx\n",
           rounds, put_ok, core_ok, got_ok, (unsigned long long)sum);
    xcb_disconnect(c);
    return core_ok == rounds && got_ok == rounds ? 0 : 1;
}
