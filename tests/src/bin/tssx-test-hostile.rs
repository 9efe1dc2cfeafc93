//! The hostile-peer fuzzer's two programs (issue 16): a victim server running an ordinary
//! workload, and an attacker client that is a legitimate end of a swapped connection, maps the
//! connection's segment and writes random and adversarial values into every header field and
//! ring byte while it talks. Both run under the hook; neither uses tssx code (the segment
//! layout comes from `tssx-common`'s ABI types, as any C program could declare it).
//!
//! `tssx-test-hostile victim PATH SEED [HOSTILE]`: binds PATH and serves connections one after another
//! (prints `ready`). For each it may fork (the child serves, the parent closes its copy; or
//! both serve the same end at once), then runs random operations until EOF or an error:
//! blocking and non-blocking reads into a buffer guarded by canary bytes, `poll` and
//! `epoll_wait` with timeouts, echo writes (blocking and `MSG_DONTWAIT`), `readv`, `MSG_PEEK`,
//! `shutdown(SHUT_WR)`, and a `sendmsg` carrying a descriptor (which hands the connection back
//! to the kernel). A read that delivers more than it asked or writes past its buffer prints
//! `violation ...` and exits 3. After each connection it prints
//! `end conn=N result=eof|ECONNRESET|EPIPE|errno-E at_ns=T fds=F`. Connections from the
//! HOSTILE-th on are served as a plain echo (no shutdown, no descriptor), for a polite client.
//!
//! `tssx-test-hostile attack PATH SEED MILLIS [MODE]`: connects, talks until its hook maps the
//! segment (the memfd named `tssx-segment` among its own descriptors; prints `mapped` or,
//! after 3 s without one, `unmapped`), then for MILLIS ms writes adversarial values into the
//! header and the rings at random moments while a second thread keeps writing and reading the
//! socket. Then it ends the connection (MODE, or chosen by SEED: `exit`, `close`,
//! `shutdown`, `kill`), printing `attack end at_ns=T` first. A watchdog ends the process
//! (`_exit`) 2 s after the attack even if its own hook got stuck on what it wrote.
//!
//! In a connection served without a fork (half of them), the victim may also `execve` itself in
//! the middle of it (rarely): the new image (`resume`) goes on with that connection, the hook
//! having handed it across, and then serves the next ones; its `end` line says `exec`.
//!
//! `tssx-test-hostile attack-server PATH SEED MILLIS [MODE]`: the same attack from the accepting
//! end (binds PATH, prints `ready`, accepts one connection); `tssx-test-hostile victim-client
//! PATH SEED`: the victim's workload from the connecting end, one connection, then `end` (with
//! `fds=` after and `before=` before it).
//!
//! `tssx-test-hostile polite PATH`: connects, sends 100 KiB, reads it back, checks it, closes;
//! prints `polite ok`.
use std::{
    io::Write as _,
    os::{
        fd::{AsRawFd as _, IntoRawFd as _},
        unix::net::{UnixListener, UnixStream},
    },
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
    thread,
    time::{Duration, Instant},
};

use core::mem::offset_of;
use tssx_common::segment::{EndLine, ProducerLine, RingControl, SegmentHeader, SegmentLayout, NOT_YET};
use tssx_tests::{monotonic_ns as now_ns, Rng};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn outcome(e: i32) -> String {
    match e {
        0 => "eof".into(),
        libc::EPIPE => "EPIPE".into(),
        libc::ECONNRESET => "ECONNRESET".into(),
        e => format!("errno-{e}"),
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0).saturating_sub(1)
}

// ---------------------------------------------------------------------------------------------
// The victim

const CANARY: u8 = 0xA5;
const GUARD: usize = 64;

/// Checks that a read asked for `asked` bytes returned at most that and left the guard alone.
fn check_read(what: &str, rc: isize, asked: usize, buf: &[u8]) {
    if rc > asked as isize {
        say(&format!("violation {what} returned {rc} > asked {asked}"));
        std::process::exit(3);
    }
    if buf[asked..asked + GUARD].iter().any(|&b| b != CANARY) {
        say(&format!("violation {what} wrote past the {asked} bytes it was given"));
        std::process::exit(3);
    }
}

/// One end's workload on `fd` until EOF or an error; returns the errno (0 for EOF).
/// What an `execve` of the victim in the middle of a connection hands its new image (see
/// [`resume`]): the listening socket, the seed, the connection's number, how many are hostile.
#[derive(Clone, Copy)]
struct ExecCtx {
    listener: i32,
    seed: u64,
    conn: u64,
    hostile: u64,
}

/// Replaces this image with a new one of the same program that goes on with connection
/// `ctx.conn` on `fd` and then serves the next ones (the hook hands the swapped connection
/// across the exec). Returns only if the exec failed.
fn exec_self(fd: i32, ctx: ExecCtx, rng_seed: u64) {
    for f in [fd, ctx.listener] {
        // SAFETY: clears FD_CLOEXEC on our own descriptor.
        unsafe { libc::fcntl(f, libc::F_SETFD, 0) };
    }
    let args: Vec<std::ffi::CString> = [
        "tssx-test-hostile".to_owned(),
        "resume".into(),
        ctx.listener.to_string(),
        fd.to_string(),
        ctx.seed.to_string(),
        ctx.conn.to_string(),
        ctx.hostile.to_string(),
        rng_seed.to_string(),
    ]
    .into_iter()
    .map(|a| std::ffi::CString::new(a).unwrap())
    .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(core::ptr::null());
    // SAFETY: a NUL-terminated argv of live strings; the environment (LD_PRELOAD) is inherited.
    unsafe { libc::execv(c"/proc/self/exe".as_ptr(), argv.as_ptr()) };
    for f in [fd, ctx.listener] {
        // SAFETY: sets FD_CLOEXEC back on our own descriptor.
        unsafe { libc::fcntl(f, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

fn workload(fd: i32, rng: &mut Rng, echo_only: bool) -> i32 {
    workload_exec(fd, rng, echo_only, None)
}

fn workload_exec(fd: i32, rng: &mut Rng, echo_only: bool, exec: Option<ExecCtx>) -> i32 {
    let mut buf = vec![0u8; (1 << 16) + GUARD];
    // SAFETY: epoll_create1 has no memory arguments.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, u64: fd as u64 };
    // SAFETY: registers our socket with a live event.
    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    let mut shut = false;
    let mut passed = false;
    let mut pending: Vec<u8> = Vec::new();
    let mut ops = 0u64;
    let result = loop {
        ops += 1;
        let bits = rng.below(17);
        let asked = 1 + rng.below(1 << bits) as usize;
        buf[..asked + GUARD].fill(CANARY);
        let mut op = rng.below(if echo_only {
            10
        } else if exec.is_some() {
            13
        } else {
            12
        });
        // Never block reading while holding bytes to echo (a polite peer waits for them).
        if !pending.is_empty() && matches!(op, 0..=2 | 6) && (echo_only || rng.below(2) == 0) {
            op = 8;
        }
        let started = Instant::now();
        // A call that never blocks on a plain socket (non-blocking, or a peek) must not wait
        // here either, whatever the peer wrote (a forged lock word costs at most a few hundred
        // microseconds; the bound leaves room for a loaded machine).
        let never_blocks = matches!(op, 3 | 7 | 9);
        let check_quick = |what: &str| {
            if never_blocks && started.elapsed() > Duration::from_secs(1) {
                say(&format!("violation a non-blocking {what} took {:?}", started.elapsed()));
                std::process::exit(3);
            }
        };
        let rc: isize = match op {
            // Blocking read.
            0..=2 => {
                // SAFETY: reads into our buffer, `asked` < its length.
                let rc = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), asked) };
                check_read("read", rc, asked, &buf);
                rc
            }
            // Non-blocking recv.
            3 => {
                // SAFETY: as above.
                let rc = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), asked, libc::MSG_DONTWAIT) };
                check_quick("recv");
                check_read("recv(MSG_DONTWAIT)", rc, asked, &buf);
                if rc < 0 && errno() == libc::EAGAIN {
                    continue;
                }
                rc
            }
            // poll then read.
            4 => {
                let mut pfd = libc::pollfd { fd, events: libc::POLLIN | libc::POLLRDHUP, revents: 0 };
                // SAFETY: one live pollfd.
                let n = unsafe { libc::poll(&mut pfd, 1, rng.below(50) as i32) };
                if n <= 0 {
                    continue;
                }
                // SAFETY: as above.
                let rc = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), asked, libc::MSG_DONTWAIT) };
                check_read("recv after poll", rc, asked, &buf);
                if rc < 0 && errno() == libc::EAGAIN {
                    continue;
                }
                rc
            }
            // epoll_wait then read.
            5 => {
                let mut out = [libc::epoll_event { events: 0, u64: 0 }; 2];
                // SAFETY: waits into our array.
                let n = unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 2, rng.below(50) as i32) };
                if n <= 0 {
                    continue;
                }
                // SAFETY: as above.
                let rc = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), asked, libc::MSG_DONTWAIT) };
                check_read("recv after epoll_wait", rc, asked, &buf);
                if rc < 0 && errno() == libc::EAGAIN {
                    continue;
                }
                rc
            }
            // readv into two pieces.
            6 => {
                let cut = rng.below(asked as u64 + 1) as usize;
                let (a, b) = buf.split_at_mut(cut);
                let iov = [
                    libc::iovec { iov_base: a.as_mut_ptr().cast(), iov_len: cut },
                    libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: asked - cut },
                ];
                // SAFETY: two iovecs inside our buffer.
                let rc = unsafe { libc::readv(fd, iov.as_ptr(), 2) };
                check_read("readv", rc, asked, &buf);
                rc
            }
            // Peek, non-blocking.
            7 => {
                // SAFETY: as for read.
                let rc = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), asked, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
                check_quick("peek");
                check_read("recv(MSG_PEEK)", rc, asked, &buf);
                if rc < 0 && errno() == libc::EAGAIN || rc > 0 {
                    continue;
                }
                rc
            }
            // Echo what was read, blocking or not.
            8 | 9 => {
                if shut || pending.is_empty() {
                    continue;
                }
                let flags = libc::MSG_NOSIGNAL | if op == 9 { libc::MSG_DONTWAIT } else { 0 };
                // SAFETY: sends from our vector.
                let rc = unsafe { libc::send(fd, pending.as_ptr().cast(), pending.len(), flags) };
                check_quick("send");
                if rc > pending.len() as isize {
                    say(&format!("violation send returned {rc} > {}", pending.len()));
                    std::process::exit(3);
                }
                if rc > 0 {
                    pending.drain(..rc as usize);
                    continue;
                }
                if rc < 0 && errno() == libc::EAGAIN {
                    continue;
                }
                if rc < 0 {
                    break errno();
                }
                continue;
            }
            // Shut down writing (rarely).
            10 => {
                if !shut && rng.below(40) == 0 {
                    shut = true;
                    // SAFETY: no memory arguments.
                    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
                }
                continue;
            }
            // Exec in the middle of the connection (rarely; the new image goes on with it).
            12 => {
                if let Some(ctx) = exec {
                    // Not before the connection had time to migrate (an exec before gives the
                    // migration up: nothing to attack).
                    if ops > 2000 && rng.below(30) == 0 {
                        let next = rng.next();
                        exec_self(fd, ctx, next);
                    }
                }
                continue;
            }
            // Pass a descriptor (hands the connection back to the kernel), once, rarely.
            _ => {
                if passed || shut || rng.below(20) != 0 {
                    continue;
                }
                passed = true;
                let rc = send_fd(fd);
                if rc < 0 && errno() != libc::EAGAIN {
                    break errno();
                }
                continue;
            }
        };
        if rc == 0 {
            break 0;
        }
        if rc < 0 {
            let e = errno();
            if e == libc::EINTR || e == libc::EAGAIN {
                continue;
            }
            break e;
        }
        if pending.len() < (1 << 20) {
            pending.extend_from_slice(&buf[..rc as usize]);
        }
    };
    // SAFETY: closes our epoll fd.
    unsafe { libc::close(ep) };
    result
}

/// Sends one byte with a descriptor of /dev/null attached.
fn send_fd(fd: i32) -> isize {
    let Ok(null) = std::fs::File::open("/dev/null") else { return -1 };
    let mut byte = [b'F'];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut space = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; fields set below point at live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
    // SAFETY: the control buffer holds one header and an int.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
        libc::CMSG_DATA(cmsg).cast::<i32>().write_unaligned(null.as_raw_fd());
    }
    // SAFETY: a valid msghdr over live buffers.
    unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) }
}

/// The victim as the client: one connection, the same workload, then `end`.
fn victim_client(path: &str, seed: u64) {
    // SAFETY: signal has no memory arguments.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let before = open_fds();
    let stream = UnixStream::connect(path).expect("connect");
    let mut rng = Rng::new(seed);
    let fd = stream.into_raw_fd();
    let result = workload(fd, &mut rng, false);
    // SAFETY: closes our socket.
    unsafe { libc::close(fd) };
    say(&format!("end conn=0 result={} at_ns={} fds={} before={before}", outcome(result), now_ns(), open_fds()));
}

fn victim(path: &str, seed: u64, hostile_conns: u64) {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).expect("bind");
    // Anyone may connect (an unprivileged attacker against a root server).
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
    // SAFETY: signal has no memory arguments.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    say(&format!("ready fds={}", open_fds()));
    serve(listener, seed, hostile_conns, 0);
}

/// The new image after [`exec_self`]: finishes connection `conn` on `fd`, then serves on.
fn resume(args: &[String]) {
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok()).expect("resume arguments");
    let (listener, fd, seed, conn, hostile, rng_seed) = (num(2) as i32, num(3) as i32, num(4), num(5), num(6), num(7));
    for f in [fd, listener] {
        // SAFETY: sets FD_CLOEXEC back on the descriptors the old image handed us.
        unsafe { libc::fcntl(f, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: signal has no memory arguments.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let e = workload(fd, &mut Rng::new(rng_seed), conn >= hostile);
    // SAFETY: closes our socket.
    unsafe { libc::close(fd) };
    say(&format!("end conn={conn} result={} at_ns={} fds={} exec", outcome(e), now_ns(), open_fds()));
    // SAFETY: the listening socket the old image handed us, ours alone.
    let listener = unsafe { <UnixListener as std::os::fd::FromRawFd>::from_raw_fd(listener) };
    serve(listener, seed, hostile, conn + 1);
}

/// Serves connections from number `first` on.
fn serve(listener: UnixListener, seed: u64, hostile_conns: u64, first: u64) {
    for conn in first.. {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) => continue,
        };
        let mut rng = Rng::new(seed ^ (conn + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let fd = stream.into_raw_fd();
        let echo_only = conn >= hostile_conns;
        // No fork (half), the child alone (three in eight), both (one in eight: such an end is
        // never swapped, so rarely).
        let mut fork = match rng.below(8) {
            0..=3 => 0,
            4..=6 => 1,
            _ => 2,
        };
        if echo_only && fork == 2 {
            // Two processes echoing one stream interleave their echoes: a polite client's
            // check needs one echoing process (the child here).
            fork = 1;
        }
        let result = match fork {
            // Fork: the child serves; the parent closes its copy (1) or serves too (2).
            1 | 2 => {
                // SAFETY: fork in a single-threaded program.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    let mut child_rng = Rng::new(rng.next());
                    let e = workload(fd, &mut child_rng, echo_only);
                    // SAFETY: ends the child without running the parent's destructors.
                    unsafe { libc::_exit(if e == 0 { 10 } else { 11 }) };
                }
                let mut e = 0;
                if fork == 2 {
                    e = workload(fd, &mut rng, echo_only);
                }
                // SAFETY: closes our copy.
                unsafe { libc::close(fd) };
                let mut status = 0;
                // SAFETY: reaps our child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                if libc::WIFSIGNALED(status) || !matches!(libc::WEXITSTATUS(status), 10 | 11) {
                    say(&format!("violation child ended with status {status:#x}"));
                    std::process::exit(3);
                }
                e
            }
            _ => {
                let ctx = ExecCtx { listener: listener.as_raw_fd(), seed, conn, hostile: hostile_conns };
                let e = workload_exec(fd, &mut rng, echo_only, Some(ctx));
                // SAFETY: closes our socket.
                unsafe { libc::close(fd) };
                e
            }
        };
        say(&format!("end conn={conn} result={} at_ns={} fds={}", outcome(result), now_ns(), open_fds()));
    }
}

// ---------------------------------------------------------------------------------------------
// The attacker

/// One field of the header: offset and width (4 or 8 bytes).
#[derive(Clone, Copy)]
struct Field {
    name: &'static str,
    offset: usize,
    wide: bool,
}

/// Every field of the header, both ends' lines and both rings' control blocks included.
fn fields() -> Vec<Field> {
    let mut f = Vec::new();
    let mut add = |name: &'static str, offset: usize, wide: bool| f.push(Field { name, offset, wide });
    add("magic", offset_of!(SegmentHeader, magic), true);
    add("version", offset_of!(SegmentHeader, version), false);
    add("header_size", offset_of!(SegmentHeader, header_size), false);
    add("total_size", offset_of!(SegmentHeader, total_size), true);
    add("ring_capacity", offset_of!(SegmentHeader, ring_capacity), true);
    for i in 0..2 {
        add("ring_offsets", offset_of!(SegmentHeader, ring_offsets) + 8 * i, true);
        add("tssx", offset_of!(SegmentHeader, tssx) + 4 * i, false);
        add("refcount", offset_of!(SegmentHeader, refcount) + 4 * i, false);
        add("socket_inode", offset_of!(SegmentHeader, socket_inode) + 8 * i, true);
        add("asleep", offset_of!(SegmentHeader, asleep) + 4 * i, false);
        add("shut", offset_of!(SegmentHeader, shut) + 4 * i, false);
        let ring = offset_of!(SegmentHeader, rings) + i * core::mem::size_of::<RingControl>();
        add("head", ring + offset_of!(RingControl, producer), true);
        add("producer lock", ring + offset_of!(RingControl, producer) + 8, false);
        add("producer reserved", ring + offset_of!(RingControl, producer) + 12, false);
        add("geometry", ring + offset_of!(RingControl, producer) + offset_of!(ProducerLine, geometry), true);
        add("tail", ring + offset_of!(RingControl, consumer), true);
        add("consumer lock", ring + offset_of!(RingControl, consumer) + 8, false);
        add("consumer reserved", ring + offset_of!(RingControl, consumer) + 12, false);
        let end = offset_of!(SegmentHeader, ends) + i * core::mem::size_of::<EndLine>();
        add("joined", end + offset_of!(EndLine, joined), false);
        add("ready", end + offset_of!(EndLine, ready), false);
        add("switch_at", end + offset_of!(EndLine, switch_at), true);
        add("back_at", end + offset_of!(EndLine, back_at), true);
        add("bells_at", end + offset_of!(EndLine, bells_at), true);
        add("bells_sent", end + offset_of!(EndLine, bells_sent), true);
        add("sock_written", end + offset_of!(EndLine, sock_written), true);
        add("sock_read", end + offset_of!(EndLine, sock_read), true);
        add("bells_drained", end + offset_of!(EndLine, bells_drained), true);
        add("active_ns", end + offset_of!(EndLine, active_ns), true);
        add("replay_from", end + offset_of!(EndLine, replay_from), true);
        for r in 0..5 {
            add("end reserved", end + offset_of!(EndLine, reserved) + 8 * r, true);
        }
    }
    add("state", offset_of!(SegmentHeader, state), false);
    add("reserved", offset_of!(SegmentHeader, reserved), false);
    f
}

/// The segment's memfd among this process's descriptors (the hook keeps it), if any.
fn find_segment() -> Option<i32> {
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if target.to_string_lossy().contains("tssx-segment") {
            return entry.file_name().to_str()?.parse().ok();
        }
    }
    None
}

/// An adversarial value for a field whose current value is `cur`.
fn value(rng: &mut Rng, cur: u64, capacity: u64, tids: &[u64]) -> u64 {
    match rng.below(16) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => NOT_YET - 1,
        4 => cur.wrapping_add(1 + rng.below(16)),
        5 => cur.wrapping_sub(1 + rng.below(16)),
        6 => cur.wrapping_add(capacity),
        7 => cur.wrapping_add(capacity + 1 + rng.below(capacity)),
        8 => cur.wrapping_sub(capacity),
        9 => 1 << 63,
        10 => tids[rng.below(tids.len() as u64) as usize],
        11 => rng.below(8),
        12 => u64::from(u32::MAX),
        // A geometry: a capacity (a power of two up to twice the ring's, or any) and an offset.
        13 => (1u64 << rng.below(1 + capacity.max(1).ilog2() as u64 + 1)) | (rng.next() << 32),
        14 => (rng.next() & 0xffff_ffff) | (rng.below(capacity.max(1)) << 32),
        _ => rng.next(),
    }
}

/// Stores `v` into the field at `base + f.offset` (atomically, as the hooks access it).
fn poke(base: *mut u8, f: Field, v: u64) {
    // SAFETY: `f.offset` is inside the mapped header and aligned for its width (offsets come
    // from the ABI types); the header's fields are atomics, so concurrent access is defined.
    unsafe {
        if f.wide {
            (*base.add(f.offset).cast::<AtomicU64>()).store(v, Relaxed);
        } else {
            (*base.add(f.offset).cast::<AtomicU32>()).store(v as u32, Relaxed);
        }
    }
}

fn peek(base: *mut u8, f: Field) -> u64 {
    // SAFETY: as in `poke`.
    unsafe {
        if f.wide {
            (*base.add(f.offset).cast::<AtomicU64>()).load(Relaxed)
        } else {
            u64::from((*base.add(f.offset).cast::<AtomicU32>()).load(Relaxed))
        }
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

fn attack(path: &str, seed: u64, millis: u64, mode: Option<&str>, serve: bool) {
    // SAFETY: signal has no memory arguments.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let mut rng = Rng::new(seed);
    let stream = if serve {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind");
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
        say("ready");
        listener.accept().expect("accept").0
    } else {
        UnixStream::connect(path).expect("connect")
    };
    let fd = stream.as_raw_fd();
    // The victim's pid: a thread id a lock word might plausibly hold.
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = core::mem::size_of::<libc::ucred>() as u32;
    // SAFETY: reads SO_PEERCRED into a live ucred of the given length.
    unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len) };
    // Talk until the hook maps the segment.
    let started = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    let memfd = loop {
        if let Some(fd) = find_segment() {
            break Some(fd);
        }
        if started.elapsed() > Duration::from_secs(3) {
            break None;
        }
        let len = 1 + rng.below(4096) as usize;
        let chunk = rng.bytes(len);
        // SAFETY: sends from / receives into our buffers.
        unsafe {
            libc::send(fd, chunk.as_ptr().cast(), chunk.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT);
            libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT);
        }
        thread::sleep(Duration::from_millis(1));
    };
    let watchdog_ms = millis + 2000;
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(watchdog_ms));
        say(&format!("attack end at_ns={} watchdog", now_ns()));
        // SAFETY: ends the process at once, whatever its other threads are stuck in.
        unsafe { libc::_exit(0) };
    });
    let Some(memfd) = memfd else {
        say("unmapped");
        return;
    };
    // SAFETY: fstat into a live struct.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::fstat(memfd, &mut st) };
    let size = st.st_size as usize;
    // SAFETY: maps the memfd shared, read-write; checked below.
    let base = unsafe { libc::mmap(core::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, memfd, 0) };
    assert!(base != libc::MAP_FAILED, "mmap of the segment failed: {}", std::io::Error::last_os_error());
    let base = base.cast::<u8>();
    // SAFETY: the header is at offset 0 of the mapping; its capacity is immutable.
    let capacity = unsafe { (*base.cast::<SegmentHeader>()).ring_capacity };
    let layout = SegmentLayout::new(capacity as usize).expect("a valid segment");
    say(&format!("mapped size={size} capacity={capacity}"));
    // The talker: keeps the connection busy both ways through the attacker's own hook.
    let talker = thread::spawn(move || {
        let mut rng = Rng::new(seed ^ 0x5555);
        let mut buf = vec![0u8; 1 << 16];
        while !STOP.load(Relaxed) {
            let bits = rng.below(17);
            let len = 1 + rng.below(1 << bits) as usize;
            let chunk = rng.bytes(len);
            let flags = libc::MSG_NOSIGNAL | if rng.below(2) == 0 { libc::MSG_DONTWAIT } else { 0 };
            // SAFETY: sends from / receives into our buffers.
            unsafe {
                libc::send(fd, chunk.as_ptr().cast(), chunk.len(), flags);
                libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT);
            }
        }
    });
    let fields = fields();
    // SAFETY: gettid/getpid have no arguments.
    let tids = [u64::from(cred.pid as u32), unsafe { libc::gettid() } as u64, unsafe { libc::getpid() } as u64, 1];
    let deadline = Instant::now() + Duration::from_millis(millis);
    let mut pokes = 0u64;
    while Instant::now() < deadline {
        match rng.below(11) {
            // Any aligned word of the header page, named field or not (fields added to the ABI
            // later are covered too).
            10 => {
                let at = 8 * rng.below((tssx_common::segment::RING_DATA_OFFSET / 8) as u64) as usize;
                let f = Field { name: "header word", offset: at, wide: true };
                let v = value(&mut rng, peek(base, f), capacity, &tids);
                poke(base, f, v);
                pokes += 1;
            }
            // One field, once.
            0..=5 => {
                let f = fields[rng.below(fields.len() as u64) as usize];
                let v = value(&mut rng, peek(base, f), capacity, &tids);
                poke(base, f, v);
                pokes += 1;
            }
            // One field, held for a while (a lock word, a state, a count kept wrong).
            6 => {
                let f = fields[rng.below(fields.len() as u64) as usize];
                let v = value(&mut rng, peek(base, f), capacity, &tids);
                let until = Instant::now() + Duration::from_millis(rng.below(200));
                say(&format!("hold {} at {} = {v:#x}", f.name, f.offset));
                while Instant::now() < until {
                    poke(base, f, v);
                    pokes += 1;
                    thread::yield_now();
                }
            }
            // Ring bytes.
            7 => {
                let ring = if rng.below(2) == 0 { layout.ring_a_to_b } else { layout.ring_b_to_a };
                let at = rng.below(capacity) as usize;
                let len = (1 + rng.below(4096) as usize).min(capacity as usize - at);
                let junk = rng.bytes(len);
                // SAFETY: inside the ring's data, which lies inside the mapping; racing the
                // victim's copies is the point (bytes, no atomicity needed for garbage).
                unsafe { core::ptr::copy_nonoverlapping(junk.as_ptr(), base.add(ring + at), len) };
                pokes += 1;
            }
            // Pause: let the victim get going again.
            _ => thread::sleep(Duration::from_micros(rng.below(20_000))),
        }
    }
    // Last words, left in place: a burst of lies nobody corrects (a lock word left held, a
    // count left wrong), in two of three runs.
    if rng.below(3) != 0 {
        for _ in 0..1 + rng.below(24) {
            let f = fields[rng.below(fields.len() as u64) as usize];
            let v = value(&mut rng, peek(base, f), capacity, &tids);
            poke(base, f, v);
        }
    }
    let mode = mode.map(str::to_owned).unwrap_or_else(|| ["exit", "close", "shutdown", "kill"][rng.below(4) as usize].to_owned());
    say(&format!("attack end at_ns={} pokes={pokes} mode={mode}", now_ns()));
    STOP.store(true, Relaxed);
    match mode.as_str() {
        "close" => {
            drop(stream);
            // SAFETY: ends the process at once.
            unsafe { libc::_exit(0) };
        }
        "shutdown" => {
            // SAFETY: no memory arguments.
            unsafe { libc::shutdown(fd, libc::SHUT_WR) };
            thread::sleep(Duration::from_millis(100));
            // SAFETY: ends the process at once.
            unsafe { libc::_exit(0) };
        }
        "kill" => {
            // SAFETY: kills ourselves.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        _ => {
            // SAFETY: ends the process at once.
            unsafe { libc::_exit(0) };
        }
    }
    let _ = talker.join();
}

fn polite(path: &str) {
    let mut stream = UnixStream::connect(path).expect("connect");
    let data = Rng::new(42).bytes(100 << 10);
    let mut writer = stream.try_clone().expect("try_clone");
    let sent = data.clone();
    let w = thread::spawn(move || writer.write_all(&sent).expect("write"));
    let mut got = vec![0u8; data.len()];
    std::io::Read::read_exact(&mut stream, &mut got).expect("read the echo");
    w.join().unwrap();
    assert!(got == data, "the echo differs");
    say("polite ok");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match (arg(1), arg(2)) {
        (Some("victim"), Some(path)) => {
            victim(path, arg(3).and_then(|s| s.parse().ok()).unwrap_or(1), arg(4).and_then(|s| s.parse().ok()).unwrap_or(u64::MAX))
        }
        (Some(role @ ("attack" | "attack-server")), Some(path)) => {
            let seed = arg(3).and_then(|s| s.parse().ok()).unwrap_or(1);
            let millis = arg(4).and_then(|s| s.parse().ok()).unwrap_or(3000);
            attack(path, seed, millis, arg(5), role == "attack-server");
        }
        (Some("resume"), Some(_)) => resume(&args),
        (Some("victim-client"), Some(path)) => victim_client(path, arg(3).and_then(|s| s.parse().ok()).unwrap_or(1)),
        (Some("polite"), Some(path)) => polite(path),
        _ => {
            eprintln!("usage: tssx-test-hostile victim PATH SEED [HOSTILE] | victim-client PATH SEED | attack[-server] PATH SEED MILLIS [MODE] | polite PATH");
            std::process::exit(2);
        }
    }
}
