//! A peer that lies in the segment header (issue 16): every field, as the threat model of
//! `tssx_common::segment` ("Threat model: a hostile peer") says.
//!
//! One connection swapped inside this process (no agent): the client end plays the peer, whose
//! lies are plain stores into the shared header (what a hostile process that maps the segment
//! does), and the server end is the victim, served by the hook's entry points. For every field
//! and a set of adversarial values the victim's calls must return (within a bound), never
//! deliver more than they asked nor write past the caller's buffer, and, once the peer is gone
//! (its socket shut down in the kernel, as when its process dies), see EOF (or ECONNRESET) on
//! reads and EPIPE on writes, as a plain socket gives. Then the fields with a stated outcome.

use std::{
    mem::{offset_of, size_of},
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering::SeqCst},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use libc::c_int;
use tssx_common::segment::{EndLine, ProducerLine, RingControl, RingGeometry, SegmentHeader, NOT_YET, SHUT_READ, SHUT_RESET, SHUT_WRITE};
use tssx_hook::{calls, table};

mod support;
use support::Pair;
use support::Rng;

/// Ring capacity of the test connections (the most they grow to).
const RING: u64 = 4096;
/// Capacity the test connections' rings start with: the victim's rings grow while it writes.
const RING_INITIAL: u64 = 512;
const GUARD: usize = 64;
const CANARY: u8 = 0xA5;

fn pair() -> Pair {
    let fds = support::socketpair(0);
    support::install_swapped_growing(fds, RING as usize, RING_INITIAL as usize);
    Pair { client: fds[0], server: fds[1] }
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// One header field: where, how wide, and its name.
#[derive(Clone, Copy, Debug)]
struct Field {
    name: &'static str,
    end: usize,
    offset: usize,
    wide: bool,
}

/// Every field of the header, both ends' copies.
fn fields() -> Vec<Field> {
    let mut f = Vec::new();
    let mut add = |name: &'static str, end: usize, offset: usize, wide: bool| f.push(Field { name, end, offset, wide });
    add("magic", 0, offset_of!(SegmentHeader, magic), true);
    add("version", 0, offset_of!(SegmentHeader, version), false);
    add("header_size", 0, offset_of!(SegmentHeader, header_size), false);
    add("total_size", 0, offset_of!(SegmentHeader, total_size), true);
    add("ring_capacity", 0, offset_of!(SegmentHeader, ring_capacity), true);
    add("state", 0, offset_of!(SegmentHeader, state), false);
    add("reserved", 0, offset_of!(SegmentHeader, reserved), false);
    for e in 0..2 {
        add("ring_offsets", e, offset_of!(SegmentHeader, ring_offsets) + 8 * e, true);
        add("tssx", e, offset_of!(SegmentHeader, tssx) + 4 * e, false);
        add("refcount", e, offset_of!(SegmentHeader, refcount) + 4 * e, false);
        add("socket_inode", e, offset_of!(SegmentHeader, socket_inode) + 8 * e, true);
        add("asleep", e, offset_of!(SegmentHeader, asleep) + 4 * e, false);
        add("shut", e, offset_of!(SegmentHeader, shut) + 4 * e, false);
        let ring = offset_of!(SegmentHeader, rings) + e * size_of::<RingControl>();
        add("head", e, ring + offset_of!(RingControl, producer), true);
        add("producer lock", e, ring + offset_of!(RingControl, producer) + 8, false);
        add("geometry", e, ring + offset_of!(RingControl, producer) + offset_of!(ProducerLine, geometry), true);
        add("tail", e, ring + offset_of!(RingControl, consumer), true);
        add("consumer lock", e, ring + offset_of!(RingControl, consumer) + 8, false);
        let line = offset_of!(SegmentHeader, ends) + e * size_of::<EndLine>();
        add("joined", e, line + offset_of!(EndLine, joined), false);
        add("ready", e, line + offset_of!(EndLine, ready), false);
        add("switch_at", e, line + offset_of!(EndLine, switch_at), true);
        add("back_at", e, line + offset_of!(EndLine, back_at), true);
        add("bells_at", e, line + offset_of!(EndLine, bells_at), true);
        add("bells_sent", e, line + offset_of!(EndLine, bells_sent), true);
        add("sock_written", e, line + offset_of!(EndLine, sock_written), true);
        add("sock_read", e, line + offset_of!(EndLine, sock_read), true);
        add("bells_drained", e, line + offset_of!(EndLine, bells_drained), true);
        add("active_ns", e, line + offset_of!(EndLine, active_ns), true);
        add("replay_from", e, line + offset_of!(EndLine, replay_from), true);
    }
    f
}

/// The header of `fd`'s connection, as raw bytes the "peer" stores into.
fn header_base(fd: c_int) -> usize {
    let c = table::lookup(fd).expect("swapped");
    c.header() as *const SegmentHeader as usize
}

fn load(base: usize, f: Field) -> u64 {
    // SAFETY: the offset lies inside the mapped header and is aligned for its width (from the
    // ABI types); the header's fields are atomics.
    unsafe {
        if f.wide {
            (*(base as *const AtomicU64).byte_add(f.offset)).load(SeqCst)
        } else {
            u64::from((*(base as *const AtomicU32).byte_add(f.offset)).load(SeqCst))
        }
    }
}

/// The peer's lie: `v` stored into field `f` of the header at `base`.
fn store(base: usize, f: Field, v: u64) {
    // SAFETY: as in `load`.
    unsafe {
        if f.wide {
            (*(base as *const AtomicU64).byte_add(f.offset)).store(v, SeqCst);
        } else {
            (*(base as *const AtomicU32).byte_add(f.offset)).store(v as u32, SeqCst);
        }
    }
}

/// Adversarial values for a field that holds `cur`.
fn lies(cur: u64) -> Vec<u64> {
    vec![
        0,
        1,
        2,
        3,
        7,
        u64::MAX,
        u64::from(u32::MAX),
        NOT_YET - 1,
        cur.wrapping_add(1),
        cur.wrapping_sub(1),
        cur.wrapping_add(RING),
        cur.wrapping_add(RING + 1),
        cur.wrapping_sub(RING),
        1 << 63,
        0x5A5A_5A5A_5A5A_5A5A,
        // Geometries (capacity low, offset high): smaller, larger than the ring, offsets
        // beyond the capacity.
        RingGeometry { capacity: 64, offset: 63 }.encode(),
        RingGeometry { capacity: RING as usize * 2, offset: 5 }.encode(),
        (u64::from(u32::MAX) << 32) | RING_INITIAL,
        (u64::from(u32::MAX) << 32) | (RING / 2),
        1 << 31,
    ]
}

/// Runs `f` on a thread; panics if it has not returned within `limit` (a hang).
fn within<T: Send + 'static>(limit: Duration, what: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("{what}: still waiting after {limit:?}"))
}

/// A read of `asked` bytes through the hook into a guarded buffer: the result, checked.
fn guarded_recv(fd: c_int, asked: usize, flags: c_int, what: &str) -> (isize, c_int) {
    let mut buf = vec![CANARY; asked + GUARD];
    // SAFETY: a live buffer of at least `asked` bytes.
    let rc = unsafe { calls::recv(fd, buf.as_mut_ptr().cast(), asked, flags) };
    let e = errno();
    assert!(rc <= asked as isize, "{what}: a read of {asked} returned {rc}");
    assert!(buf[asked..].iter().all(|&b| b == CANARY), "{what}: a read of {asked} wrote past it");
    (rc, e)
}

fn send(fd: c_int, bytes: &[u8], flags: c_int) -> (isize, c_int) {
    // SAFETY: a live buffer.
    let rc = unsafe { calls::send(fd, bytes.as_ptr().cast(), bytes.len(), flags | libc::MSG_NOSIGNAL) };
    (rc, errno())
}

fn poll(fd: c_int, events: i16) -> i16 {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one live pollfd.
    let n = unsafe { calls::poll(&mut p, 1, 0) };
    assert!(n >= 0);
    p.revents
}

/// The peer's process is gone: its socket shut down in the kernel, none of its hook's
/// bookkeeping done (as after SIGKILL).
fn peer_dies(client: c_int) {
    // SAFETY: the real shutdown of our own socket, not the hook's.
    unsafe { libc::shutdown(client, libc::SHUT_RDWR) };
}

/// The victim's side of one lie: bounded calls while the lie stands, then EOF/EPIPE once the
/// peer is gone.
fn victim_survives(server: c_int, client: c_int, what: &str) {
    let w = what.to_owned();
    within(Duration::from_secs(5), format!("{what}: calls while the peer lies"), move || {
        for asked in [1, 5, 64, 3000, 5000] {
            guarded_recv(server, asked, libc::MSG_DONTWAIT, &w);
            guarded_recv(server, asked, libc::MSG_DONTWAIT | libc::MSG_PEEK, &w);
        }
        let (rc, _) = send(server, &[7u8; 100], libc::MSG_DONTWAIT);
        assert!(rc <= 100, "{w}: a send of 100 returned {rc}");
        // More than the ring starts with: the victim's ring grows (or finds it cannot).
        let (rc, _) = send(server, &[8u8; 3000], libc::MSG_DONTWAIT);
        assert!(rc <= 3000, "{w}: a send of 3000 returned {rc}");
        poll(server, libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP);
    });
    peer_dies(client);
    let w = what.to_owned();
    within(Duration::from_secs(5), format!("{what}: the victim's reads after the peer died"), move || {
        let mut total = 0usize;
        loop {
            let (rc, e) = guarded_recv(server, 1000, 0, &w);
            if rc == 0 || (rc < 0 && e == libc::ECONNRESET) {
                break;
            }
            // (EAGAIN: a receive timeout the workload set; the 5 s bound still holds.)
            assert!(rc > 0 || e == libc::EINTR || e == libc::EAGAIN, "{w}: a read after the peer died failed with errno {e}");
            total += rc.max(0) as usize;
            // Never more than the ring plus what the socket held (a connection handed back
            // has the peer's writes in the socket: its buffer, some 200 KiB, bounds them).
            assert!(total <= RING as usize + (1 << 20), "{w}: {total} bytes read from a dead peer");
        }
    });
    let w = what.to_owned();
    within(Duration::from_secs(5), format!("{what}: the victim's writes after the peer died"), move || {
        let mut total = 0usize;
        loop {
            let (rc, e) = send(server, &[1u8; 1000], 0);
            if rc < 0 {
                assert!(matches!(e, libc::EPIPE | libc::ECONNRESET), "{w}: a write to a dead peer failed with errno {e}");
                break;
            }
            total += rc as usize;
            assert!(total <= RING as usize + (1 << 20), "{w}: {total} bytes written to a dead peer");
        }
    });
}

/// Every field, every lie: the victim's calls return, stay within their buffers, and end as
/// a plain socket's would once the peer is gone.
#[test]
fn every_header_field_lied_about_leaves_the_victim_bounded() {
    let mut cases = 0;
    // `TSSX_HOSTILE_FIELD=NAME` runs only that field's cases (to replay one).
    let only = std::env::var("TSSX_HOSTILE_FIELD").ok();
    for f in fields().into_iter().filter(|f| only.as_deref().is_none_or(|o| o == f.name)) {
        let cur = {
            let p = pair();
            load(header_base(p.server), f)
        };
        for v in lies(cur) {
            let p = pair();
            // Some data in each direction first.
            assert_eq!(send(p.client, b"peer data", 0).0, 9);
            assert_eq!(send(p.server, b"victim data", 0).0, 11);
            store(header_base(p.server), f, v);
            victim_survives(p.server, p.client, &format!("{} of end {} = {v:#x}", f.name, f.end));
            cases += 1;
        }
    }
    assert!(only.is_some() || cases > 500, "{cases}");
}

/// Every aligned word of the header, named field or not (so fields added to the ABI later are
/// covered too), with a few lies each: as above.
#[test]
fn every_header_word_lied_about_leaves_the_victim_bounded() {
    for at in (0..size_of::<SegmentHeader>()).step_by(8) {
        let f = Field { name: "header word", end: 0, offset: at, wide: true };
        for v in [0, u64::MAX, 1 << 63, 0x0000_0001_0000_0001, 0x5A5A_5A5A_5A5A_5A5A] {
            let p = pair();
            assert_eq!(send(p.client, b"peer data", 0).0, 9);
            assert_eq!(send(p.server, b"victim data", 0).0, 11);
            store(header_base(p.server), f, v);
            victim_survives(p.server, p.client, &format!("header word at {at} = {v:#x}"));
        }
    }
}

/// A lock word of the victim's that the peer set and left: taken over within a bound (the
/// issue's wedge: the victim yielded forever), the stream intact (nobody else held it), and
/// the connection noted as one whose peer wrote a lock. A value naming a thread that does not
/// exist is a dead holder, taken over without blaming the peer.
#[test]
fn ring_lock_words_the_peer_holds_are_taken_over() {
    // A live thread of this process that holds no lock.
    let (tid_tx, tid_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let bystander = thread::spawn(move || {
        // SAFETY: no arguments.
        tid_tx.send(unsafe { libc::gettid() } as u64).unwrap();
        let _ = stop_rx.recv();
    });
    let bystander_tid = tid_rx.recv().unwrap();
    // A thread id that no thread has (above any pid_max).
    let dead = (i32::MAX - 7) as u64;
    let server_end = 1usize;
    let client_end = 0usize;
    // The victim's producer lock is rings[server].producer.lock, its consumer lock
    // rings[client].consumer.lock.
    let ring = |e: usize| offset_of!(SegmentHeader, rings) + e * size_of::<RingControl>();
    let tx_lock =
        Field { name: "producer lock", end: server_end, offset: ring(server_end) + offset_of!(RingControl, producer) + 8, wide: false };
    let rx_lock =
        Field { name: "consumer lock", end: client_end, offset: ring(client_end) + offset_of!(RingControl, consumer) + 8, wide: false };
    for lock in [rx_lock, tx_lock] {
        for (holder, forged) in [(bystander_tid, true), (u64::from(u32::MAX), true), (1, true), (dead, false)] {
            let p = pair();
            assert_eq!(send(p.client, b"ping", 0).0, 4);
            store(header_base(p.server), lock, holder);
            let server = p.server;
            let started = Instant::now();
            let (got, sent) = within(Duration::from_secs(3), format!("{} = {holder}", lock.name), move || {
                let mut buf = [0u8; 16];
                // SAFETY: a live buffer.
                let got = unsafe { calls::recv(server, buf.as_mut_ptr().cast(), 16, 0) };
                let sent = send(server, b"pong", 0).0;
                (buf[..got.max(0) as usize].to_vec(), sent)
            });
            let took = started.elapsed();
            assert_eq!((got.as_slice(), sent), (&b"ping"[..], 4), "{} = {holder}", lock.name);
            let mut buf = [0u8; 16];
            // SAFETY: a live buffer.
            assert_eq!(unsafe { calls::recv(p.client, buf.as_mut_ptr().cast(), 16, 0) }, 4);
            assert_eq!(&buf[..4], b"pong");
            assert!(took < Duration::from_millis(1500), "{} = {holder}: {took:?}", lock.name);
            let noted = table::lookup(p.server).unwrap().peer_wrote_lock.load(SeqCst);
            assert_eq!(noted, forged, "{} = {holder}: noted as the peer's doing", lock.name);
        }
    }
    drop(stop_tx);
    bystander.join().unwrap();
}

/// Positions further apart than the ring: the incoming ring looks empty, the outgoing one full
/// (never a read longer than the ring).
#[test]
fn positions_beyond_the_ring_look_empty_or_full() {
    let p = pair();
    assert_eq!(send(p.client, b"abc", 0).0, 3);
    let c = table::lookup(p.server).unwrap();
    let h = c.header();
    // Incoming (rings[client]): head far beyond the tail.
    h.rings[0].producer.0.head.store(h.rings[0].consumer.0.tail.load(SeqCst) + RING + 1, SeqCst);
    assert_eq!(guarded_recv(p.server, 10_000, libc::MSG_DONTWAIT, "head beyond"), (-1, libc::EAGAIN));
    assert_eq!(poll(p.server, libc::POLLIN) & libc::POLLIN, 0);
    // Outgoing (rings[server]): the reader's tail ahead of the head.
    h.rings[1].consumer.0.tail.store(h.rings[1].producer.0.head.load(SeqCst) + 1, SeqCst);
    assert_eq!(poll(p.server, libc::POLLOUT) & libc::POLLOUT, 0);
    // (The producer's own copy of the tail may be older than the lie: at most what was asked.)
    assert!(send(p.server, b"xy", libc::MSG_DONTWAIT).0 <= 2);
    // A plausible lie: garbage, at most what was asked.
    h.rings[0].producer.0.head.store(h.rings[0].consumer.0.tail.load(SeqCst) + 100, SeqCst);
    assert_eq!(guarded_recv(p.server, 10, libc::MSG_DONTWAIT, "head +100").0, 10);
}

/// Shutdown bits: the peer can only do what its own shutdown or close does on a plain socket
/// (EOF for the victim's reads, EPIPE for its writes); a reset bit counts only once the peer
/// is really gone.
#[test]
fn shutdown_bits_the_peer_sets_are_an_eof_or_an_epipe() {
    let p = pair();
    let h = table::lookup(p.server).unwrap().header() as *const SegmentHeader;
    // SAFETY: the mapping lives as long as the pair.
    let h = unsafe { &*h };
    h.shut.0[0].store(SHUT_RESET, SeqCst);
    assert_eq!(guarded_recv(p.server, 10, libc::MSG_DONTWAIT, "reset bit"), (-1, libc::EAGAIN), "no reset while the peer lives");
    h.shut.0[1].store(SHUT_READ, SeqCst);
    assert_eq!(guarded_recv(p.server, 10, libc::MSG_DONTWAIT, "victim's SHUT_READ").0, 0);
    h.shut.0[1].store(SHUT_WRITE, SeqCst);
    assert_eq!(send(p.server, b"x", 0), (-1, libc::EPIPE));
}

/// The peer's holder count at zero: the victim sees the peer closed (EOF, EPIPE), as when it
/// really closes; the victim's own count at zero or huge changes nothing the victim relies
/// on (its mapping and memory are its own: closing both ends frees them once).
#[test]
fn holder_counts_the_peer_writes() {
    let p = pair();
    assert_eq!(send(p.client, b"last", 0).0, 4);
    let c = table::lookup(p.server).unwrap();
    c.header().refcount[0].store(0, SeqCst);
    let mut buf = [0u8; 8];
    // SAFETY: a live buffer.
    assert_eq!(unsafe { calls::recv(p.server, buf.as_mut_ptr().cast(), 8, 0) }, 4, "what was sent comes first");
    assert_eq!(guarded_recv(p.server, 8, 0, "refcount 0").0, 0);
    assert_eq!(send(p.server, b"x", 0), (-1, libc::EPIPE));
    drop(c);
    for own in [0u64, u64::from(u32::MAX)] {
        let p = pair();
        let c = table::lookup(p.server).unwrap();
        c.header().refcount[1].store(own as u32, SeqCst);
        drop(c);
        victim_survives(p.server, p.client, &format!("own refcount {own}"));
    }
}

/// A victim thread blocked in a read when the peer starts lying and then dies: it wakes (EOF or
/// ECONNRESET) within a bound, as a plain socket's reader does.
#[test]
fn a_blocked_reader_wakes_when_the_lying_peer_dies() {
    for f in fields().into_iter().filter(|f| matches!(f.name, "asleep" | "bells_sent" | "bells_drained" | "back_at" | "head" | "tail")) {
        let p = pair();
        let server = p.server;
        let base = header_base(server);
        let reader = Arc::new(());
        let _keep = reader.clone();
        let (done_tx, done_rx) = mpsc::channel();
        thread::spawn(move || {
            let r = guarded_recv(server, 100, 0, "blocked");
            let _ = done_tx.send(r);
        });
        thread::sleep(Duration::from_millis(50));
        store(base, f, 0x7FFF_FFFF);
        thread::sleep(Duration::from_millis(20));
        peer_dies(p.client);
        let got = done_rx.recv_timeout(Duration::from_secs(3));
        assert!(got.is_ok(), "{} of end {}: the blocked reader still waits after the peer died", f.name, f.end);
    }
}

/// The fuzzer in one process, fast and replayable: a liar thread stores random lies into random
/// fields at random moments while the victim runs a mixed workload of blocking, non-blocking,
/// peeking, polling reads and writes (the peer end echoes and writes too, as an honest program
/// whose hook shares the lies); then the liar stops, the peer dies, and the victim must end with
/// EOF/ECONNRESET and EPIPE within a bound. `TSSX_HOSTILE_SEED` replays one seed.
#[test]
fn random_lies_while_the_victim_works() {
    let seeds: Vec<u64> = match std::env::var("TSSX_HOSTILE_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => (1..=12).collect(),
    };
    let fields = Arc::new(fields());
    for seed in seeds {
        let p = pair();
        let (server, client) = (p.server, p.client);
        let base = header_base(server);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The peer's honest side: writes and reads without blocking.
        let peer = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut rng = Rng(seed ^ 0xABCD);
                let mut buf = [0u8; 2048];
                while !stop.load(SeqCst) {
                    let n = 1 + rng.below(2000) as usize;
                    send(client, &buf[..n], libc::MSG_DONTWAIT);
                    // SAFETY: a live buffer.
                    unsafe { calls::recv(client, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
                    thread::sleep(Duration::from_micros(rng.below(300)));
                }
            })
        };
        let liar = {
            let (stop, fields) = (Arc::clone(&stop), Arc::clone(&fields));
            thread::spawn(move || {
                let mut rng = Rng(seed ^ 0x1234_5678);
                while !stop.load(SeqCst) {
                    // A named field, or any aligned word of the header (fields added later).
                    let f = if rng.below(4) == 0 {
                        let at = 8 * rng.below((size_of::<SegmentHeader>() / 8) as u64) as usize;
                        Field { name: "header word", end: 0, offset: at, wide: true }
                    } else {
                        fields[rng.below(fields.len() as u64) as usize]
                    };
                    let choices = lies(load(base, f));
                    store(base, f, choices[rng.below(choices.len() as u64) as usize]);
                    if rng.below(4) == 0 {
                        thread::sleep(Duration::from_micros(rng.below(2000)));
                    }
                }
            })
        };
        // Stops and joins the liar and the peer even when the workload fails (before the pair,
        // declared earlier, closes and unmaps what they write into).
        struct Join(Arc<std::sync::atomic::AtomicBool>, Vec<thread::JoinHandle<()>>);
        impl Drop for Join {
            fn drop(&mut self) {
                self.0.store(true, SeqCst);
                for t in self.1.drain(..) {
                    let _ = t.join();
                }
            }
        }
        let threads = Join(Arc::clone(&stop), vec![liar, peer]);
        let what = format!("seed {seed} (TSSX_HOSTILE_SEED={seed})");
        let w = what.clone();
        within(Duration::from_secs(20), format!("{what}: the workload while the peer lies"), move || {
            let mut rng = Rng(seed);
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until {
                let asked = 1 + rng.below(6000) as usize;
                match rng.below(6) {
                    0 => {
                        guarded_recv(server, asked, libc::MSG_DONTWAIT, &w);
                    }
                    1 => {
                        guarded_recv(server, asked, libc::MSG_DONTWAIT | libc::MSG_PEEK, &w);
                    }
                    2 => {
                        // A blocking read with a receive timeout, so that a peer that stops
                        // sending ends it as on a plain socket.
                        let tv = libc::timeval { tv_sec: 0, tv_usec: 20_000 };
                        // SAFETY: sets SO_RCVTIMEO from a live timeval (the real call: the hook
                        // reads the socket's own timeout).
                        unsafe {
                            libc::setsockopt(
                                server,
                                libc::SOL_SOCKET,
                                libc::SO_RCVTIMEO,
                                (&tv as *const libc::timeval).cast(),
                                size_of::<libc::timeval>() as u32,
                            )
                        };
                        guarded_recv(server, asked, 0, &w);
                    }
                    3 => {
                        let (rc, _) = send(server, &vec![3u8; asked], libc::MSG_DONTWAIT);
                        assert!(rc <= asked as isize, "{w}: a send of {asked} returned {rc}");
                    }
                    4 => {
                        poll(server, libc::POLLIN | libc::POLLOUT);
                    }
                    _ => thread::sleep(Duration::from_micros(rng.below(500))),
                }
            }
        });
        drop(threads);
        victim_survives(server, client, &what);
    }
}

/// A doorbell count the peer inflated, read by a peek with `SO_PEEK_OFF` while handing back:
/// no allocation or copy sized by it (a count of 2^40 aborted the victim on a failed
/// allocation), just the ring's bytes.
#[test]
fn an_inflated_doorbell_count_sizes_nothing() {
    let p = pair();
    assert_eq!(send(p.client, b"abcdef", 0).0, 6);
    let c = table::lookup(p.server).unwrap();
    let peer = &c.header().ends[0];
    peer.bells_at.store(1 << 40, SeqCst);
    peer.back_at.store(6, SeqCst);
    let zero: c_int = 0;
    // SAFETY: a live int of the stated size.
    let rc = unsafe { calls::setsockopt(p.server, libc::SOL_SOCKET, libc::SO_PEEK_OFF, (&zero as *const c_int).cast(), 4) };
    assert_eq!(rc, 0);
    let (n, _) = within(Duration::from_secs(5), "peek with an inflated doorbell count".into(), move || {
        guarded_recv(p.server, 100, libc::MSG_PEEK | libc::MSG_DONTWAIT, "peek")
    });
    assert!(n <= 6, "{n}");
    drop(c);
}

/// Sends `fds` with one byte over the plain socket `via`, through the hook (which appends the
/// segments of swapped ones), and receives them on `to`: the fds the application gets.
fn pass_fds(via: c_int, to: c_int, fds: &[c_int], between: impl FnOnce()) -> Vec<c_int> {
    let mut byte = [b'x'];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = [0u64; 32];
    // SAFETY: plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: pure size computations; the header is written inside `cbuf`.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE((4 * fds.len()) as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN((4 * fds.len()) as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<c_int>(), fds.len());
        assert_eq!(calls::sendmsg(via, &msg, 0), 1);
    }
    between();
    let mut rbuf = [0u64; 32];
    msg.msg_control = rbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&rbuf);
    // SAFETY: a valid msghdr over live buffers.
    assert_eq!(unsafe { calls::recvmsg(to, &mut msg, 0) }, 1);
    // SAFETY: the kernel filled the control buffer; the hook shrank it to the application's.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        assert!(!c.is_null());
        let n = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
        (0..n).map(|i| std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<c_int>().add(i))).collect()
    }
}

fn inode(fd: c_int) -> u64 {
    // SAFETY: fstat into a live struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    st.st_ino
}

/// Two sockets passed in one message, the first swapped: whatever the peer writes into the
/// header while the message is in flight (here: the other socket's inode where the old protocol
/// looked for the passed one's),
/// the received copy of the swapped socket gets its segment, as the right end, and the other
/// socket none (its bytes would otherwise have gone through the peer's rings).
#[test]
fn a_passed_segment_is_paired_by_the_message_not_the_header() {
    let x = pair();
    let plain = support::socketpair(0);
    let via = support::socketpair(0);
    let c = table::lookup(x.server).unwrap();
    let memfd_inode = inode(c.memfd_raw().unwrap());
    let forged = inode(plain[0]);
    let got = pass_fds(via[0], via[1], &[x.server, plain[0]], || {
        for e in 0..2 {
            c.header().socket_inode[e].store(forged, SeqCst);
        }
    });
    assert_eq!(got.len(), 2, "the application gets its two fds, nothing of the hook's: {got:?}");
    let (rx_x, rx_plain) = (got[0], got[1]);
    assert_eq!((inode(rx_x), inode(rx_plain)), (inode(x.server), inode(plain[0])));
    let received = table::lookup(rx_x).expect("the swapped socket arrives swapped");
    assert_eq!(received.end(), tssx_common::segment::End::Server);
    assert_eq!(inode(received.memfd_raw().unwrap()), memfd_inode, "with its own segment");
    drop(received);
    assert!(table::lookup(rx_plain).is_none_or(|c| c.memfd_raw().is_none()), "the other socket got a segment");
    // The received copy works on the rings: the client's bytes arrive there.
    assert_eq!(send(x.client, b"to the copy", 0).0, 11);
    let (n, _) = guarded_recv(rx_x, 64, 0, "received copy");
    assert_eq!(n, 11);
    for fd in [rx_x, rx_plain, plain[0], plain[1], via[0], via[1]] {
        // SAFETY: our fds; the hook forgets tracked ones.
        unsafe { calls::close(fd) };
    }
}

/// Holding a victim thread inside its ring critical section, for as long as the test likes:
/// the thread's ring copy touches a page that is `PROT_NONE` (the caller's buffer), its
/// `SIGSEGV` handler waits for [`Hold::release`] and then makes the page readable and writable,
/// and the copy resumes where it faulted. Any other fault goes to the handler that was there.
mod hold {
    use std::{
        ptr::null_mut,
        sync::atomic::{AtomicBool, AtomicI32, AtomicIsize, AtomicUsize, Ordering::SeqCst},
    };

    static PAGE: AtomicUsize = AtomicUsize::new(0);
    static HELD: AtomicBool = AtomicBool::new(false);
    static RELEASE: AtomicBool = AtomicBool::new(false);
    /// A socket the handler writes one byte to (through the hook) before it waits, -1: none.
    static REENTER_FD: AtomicI32 = AtomicI32::new(-1);
    /// What that send returned.
    pub static REENTERED: AtomicIsize = AtomicIsize::new(0);
    /// The handler that was there before the first [`Hold`] (each restores it when dropped).
    static PREVIOUS: std::sync::OnceLock<libc::sigaction> = std::sync::OnceLock::new();

    extern "C" fn on_segv(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
        let page = PAGE.load(SeqCst);
        // SAFETY: the kernel's siginfo for a SIGSEGV.
        let addr = unsafe { (*info).si_addr() } as usize;
        if page == 0 || addr < page || addr >= page + 4096 {
            // Not ours: the previous handler takes the fault when it recurs.
            // SAFETY: set before this handler was installed; a null action only asks.
            unsafe { libc::sigaction(sig, PREVIOUS.get().map_or(null_mut(), |p| p as *const _ as *mut _), null_mut()) };
            return;
        }
        let fd = REENTER_FD.swap(-1, SeqCst);
        if fd >= 0 {
            // SAFETY: a live one-byte buffer; the hook's send (its ring path allocates nothing).
            let rc = unsafe { tssx_hook::calls::send(fd, b"C".as_ptr().cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            REENTERED.store(rc, SeqCst);
        }
        HELD.store(true, SeqCst);
        // At most 5 s, whatever the test does.
        for _ in 0..5000 {
            if RELEASE.load(SeqCst) {
                break;
            }
            let ts = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
            // SAFETY: async-signal-safe; a live timespec.
            unsafe { libc::nanosleep(&ts, null_mut()) };
        }
        // SAFETY: our own page; async-signal-safe.
        unsafe { libc::mprotect(page as *mut libc::c_void, 4096, libc::PROT_READ | libc::PROT_WRITE) };
    }

    /// A `PROT_NONE` page holding `fill`'s bytes at its start, and the handler that holds the
    /// thread that touches it. One at a time (the tests that use it take [`LOCK`]).
    pub struct Hold {
        pub page: *mut u8,
    }

    /// Serializes the users of the process-wide handler.
    pub static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    impl Hold {
        pub fn new(fill: &[u8]) -> Hold {
            // SAFETY: a fresh anonymous page.
            let page =
                unsafe { libc::mmap(null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
            assert_ne!(page, libc::MAP_FAILED);
            let page = page.cast::<u8>();
            // SAFETY: within the fresh page; then the page is made inaccessible.
            unsafe {
                std::ptr::copy_nonoverlapping(fill.as_ptr(), page, fill.len());
                assert_eq!(libc::mprotect(page.cast(), 4096, libc::PROT_NONE), 0);
            }
            HELD.store(false, SeqCst);
            RELEASE.store(false, SeqCst);
            PAGE.store(page as usize, SeqCst);
            // SAFETY: plain data; installs our handler, keeping the previous one for faults
            // that are not ours.
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_segv as *const () as usize;
                act.sa_flags = libc::SA_SIGINFO;
                libc::sigemptyset(&mut act.sa_mask);
                if PREVIOUS.get().is_none() {
                    let mut old: libc::sigaction = std::mem::zeroed();
                    assert_eq!(libc::sigaction(libc::SIGSEGV, null_mut(), &mut old), 0);
                    let _ = PREVIOUS.set(old);
                }
                assert_eq!(libc::sigaction(libc::SIGSEGV, &act, null_mut()), 0);
            }
            Hold { page }
        }

        /// The handler, before it holds the thread, sends one byte on `fd` (once).
        pub fn reenter_on(&self, fd: libc::c_int) {
            REENTERED.store(0, SeqCst);
            REENTER_FD.store(fd, SeqCst);
        }

        /// Whether a thread is held in the handler.
        pub fn held(&self) -> bool {
            HELD.load(SeqCst)
        }

        /// Lets the held thread go on.
        pub fn release(&self) {
            RELEASE.store(true, SeqCst);
        }
    }

    impl Drop for Hold {
        fn drop(&mut self) {
            RELEASE.store(true, SeqCst);
            // SAFETY: restores the handler that was there before `new`.
            unsafe {
                if let Some(old) = PREVIOUS.get() {
                    libc::sigaction(libc::SIGSEGV, old, null_mut());
                }
            }
            PAGE.store(0, SeqCst);
            // SAFETY: our page, no longer used by anyone (the held thread was joined).
            unsafe { libc::munmap(self.page.cast(), 4096) };
        }
    }
}

/// The peer clears a ring lock word of the victim's while a thread of the victim is inside that
/// ring end (its copy held there, see [`hold`]): a second thread of the victim must still wait
/// for the first, since both would use the same process-local ring handle at once (a data race
/// in the victim's own memory) and copy at the same position. The ring lock of one process is
/// its own memory; the word in the segment only orders processes. Both sides: two reads each
/// get their own bytes, two writes both arrive, in order.
#[test]
fn a_lock_word_the_peer_clears_lets_no_second_thread_in() {
    let _one = hold::LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let server_end = 1usize;
    let client_end = 0usize;
    let ring = |e: usize| offset_of!(SegmentHeader, rings) + e * size_of::<RingControl>();
    let tx_lock =
        Field { name: "producer lock", end: server_end, offset: ring(server_end) + offset_of!(RingControl, producer) + 8, wide: false };
    let rx_lock =
        Field { name: "consumer lock", end: client_end, offset: ring(client_end) + offset_of!(RingControl, consumer) + 8, wide: false };
    for lock in [rx_lock, tx_lock] {
        let p = pair();
        let (server, client) = (p.server, p.client);
        let reads = lock.name == "consumer lock";
        if reads {
            assert_eq!(send(client, b"0123456789", 0).0, 10);
        }
        let held = hold::Hold::new(b"AAAAA");
        let page = held.page as usize;
        // The first thread: a read into, or a write from, the inaccessible page.
        let first = thread::spawn(move || {
            // SAFETY: a live (if inaccessible until the handler opens it) page of 4096 bytes.
            unsafe {
                if reads {
                    calls::recv(server, page as *mut libc::c_void, 5, 0)
                } else {
                    calls::send(server, page as *const libc::c_void, 5, 0)
                }
            }
        });
        let started = Instant::now();
        while !held.held() {
            assert!(started.elapsed() < Duration::from_secs(3), "{}: the first thread never reached the ring copy", lock.name);
            thread::sleep(Duration::from_millis(1));
        }
        // The peer clears the word the first thread holds.
        assert_ne!(load(header_base(server), lock), 0, "{}: not held by the thread inside", lock.name);
        store(header_base(server), lock, 0);
        let second_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let second = {
            let done = Arc::clone(&second_done);
            thread::spawn(move || {
                let mut buf = [0u8; 5];
                let rc = if reads {
                    // SAFETY: a live buffer.
                    unsafe { calls::recv(server, buf.as_mut_ptr().cast(), 5, libc::MSG_DONTWAIT) }
                } else {
                    send(server, b"BBBBB", libc::MSG_DONTWAIT).0
                };
                done.store(true, SeqCst);
                (rc, buf)
            })
        };
        thread::sleep(Duration::from_millis(300));
        let entered_together = second_done.load(SeqCst);
        held.release();
        let first_rc = first.join().unwrap();
        let (second_rc, second_buf) = second.join().unwrap();
        assert!(!entered_together, "{}: a second thread of the victim went through the ring end while the first was inside", lock.name);
        assert_eq!((first_rc, second_rc), (5, 5), "{}", lock.name);
        if reads {
            // SAFETY: the page is readable again (the handler opened it).
            let first_got = unsafe { std::slice::from_raw_parts(held.page, 5) }.to_vec();
            assert_eq!((&first_got[..], &second_buf[..]), (&b"01234"[..], &b"56789"[..]), "{}", lock.name);
        } else {
            let mut buf = [0u8; 32];
            // SAFETY: a live buffer.
            let n = unsafe { calls::recv(client, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            assert_eq!(&buf[..n.max(0) as usize], b"AAAAABBBBB", "{}", lock.name);
        }
        drop(held);
    }
}

/// A signal handler that interrupted its own thread inside a ring copy and writes to the same
/// socket: it is not made to wait for the lock its own thread holds (that wait would never
/// end); both writes return. Where the two copies overlap the stream is garbled (the
/// interrupted copy resumes at the position it had), so only the byte counts are checked.
#[test]
fn a_signal_handler_inside_its_threads_ring_copy_is_not_locked_out() {
    let _one = hold::LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let p = pair();
    let (server, client) = (p.server, p.client);
    let held = hold::Hold::new(b"AAAAA");
    held.reenter_on(server);
    held.release();
    let page = held.page as usize;
    let rc = within(Duration::from_secs(5), "a write whose copy faults into a handler that writes too".into(), move || {
        // SAFETY: a live (if inaccessible until the handler opens it) page of 4096 bytes.
        unsafe { calls::send(server, page as *const libc::c_void, 5, 0) }
    });
    assert!(held.held(), "the copy never faulted into the handler");
    assert_eq!((rc, hold::REENTERED.load(SeqCst)), (5, 1), "the interrupted write and the handler's");
    let mut buf = [0u8; 32];
    // SAFETY: a live buffer.
    let n = unsafe { calls::recv(client, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    assert!((1..=6).contains(&n), "{n} bytes arrived of 6");
    drop(held);
}
