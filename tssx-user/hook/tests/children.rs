//! Children: what an exec or spawn hands to the new image (the inherit list after the file
//! actions), and the hand-back before an image without the hook.

use std::{
    ffi::{CStr, CString},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use libc::c_int;
use tssx_hook::{
    calls,
    conn::Phase,
    exec::{self, Image, Kind, INHERIT_VAR},
    spawn::Op,
    table,
};

mod support;
use support::{install_swapped, socketpair, Pair};

/// The tests look at every connection of the process (what an exec hands over): one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One swapped pair, the server end inheritable (no FD_CLOEXEC) unless `cloexec`.
fn swapped_pair(cloexec: bool) -> Pair {
    let fds = socketpair(0);
    if !cloexec {
        // SAFETY: clears FD_CLOEXEC on our own socket.
        assert_eq!(unsafe { libc::fcntl(fds[1], libc::F_SETFD, 0) }, 0);
    }
    install_swapped(fds, 4096);
    Pair { client: fds[0], server: fds[1] }
}

fn write(fd: c_int, bytes: &[u8]) -> isize {
    // SAFETY: a live buffer.
    unsafe { calls::write(fd, bytes.as_ptr().cast(), bytes.len()) }
}

fn read(fd: c_int, buf: &mut [u8]) -> isize {
    // SAFETY: a live buffer.
    unsafe { calls::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

fn cloexec(fd: c_int) -> bool {
    // SAFETY: F_GETFD takes no argument.
    unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
}

/// What `with_inherit` passes to a spawn of `/bin/sh` with `ops`, an environment that preloads
/// the hook: the inherit list, whether a rebuilt actions object came with it, and whether the
/// memfd was inheritable during the call. The spawn "fails" (-1), which undoes everything.
fn spawn_sees(ops: &[Op]) -> (String, bool, bool, c_int) {
    let preload = CString::new("LD_PRELOAD=/x/libtssx_preload.so").unwrap();
    let envp = [preload.as_ptr(), std::ptr::null()];
    let mut seen = (String::new(), false, false, -1);
    // SAFETY: a valid environment and path.
    let rc = unsafe {
        exec::with_inherit(envp.as_ptr(), Image::Path(c"/bin/sh".as_ptr()), Kind::Spawn(Some(ops)), |env, fa| {
            let mut i = 0;
            while !(*env.add(i)).is_null() {
                let entry = CStr::from_ptr(*env.add(i)).to_string_lossy().into_owned();
                if let Some(list) = entry.strip_prefix(&format!("{INHERIT_VAR}=")) {
                    seen.0 = list.to_owned();
                    let memfd: c_int = list.split(':').nth(1).unwrap().parse().unwrap();
                    seen.2 = !cloexec(memfd);
                    seen.3 = memfd;
                }
                i += 1;
            }
            seen.1 = fa.is_some();
            -1
        })
    };
    assert_eq!(rc, -1);
    seen
}

#[test]
fn a_spawn_hands_every_fd_its_file_actions_make_and_nothing_else() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // The inetd pattern: a close-on-exec socket dup2'ed onto 0 and 1.
    let pair = swapped_pair(true);
    let conn = table::lookup(pair.server).unwrap();
    let refcount = || conn.header().refcount[conn.end().index()].load(Ordering::SeqCst);
    assert_eq!(refcount(), 1);
    let (list, rebuilt, inheritable, memfd) = spawn_sees(&[Op::Dup2(pair.server, 0), Op::Dup2(pair.server, 1), Op::Close(pair.server)]);
    let items: Vec<&str> = list.split(',').collect();
    assert_eq!(items.len(), 2, "{list}");
    assert!(items[0].starts_with(&format!("0:{memfd}:1:")) && items[1].starts_with(&format!("1:{memfd}:1:")), "{list}");
    assert!(!rebuilt && inheritable, "the memfd survives as it is");
    // Undone after the failed spawn: close-on-exec again, the refcount as before.
    assert!(cloexec(memfd));
    assert_eq!(refcount(), 1);

    // Only stdout; the socket itself stays close-on-exec.
    let (list, ..) = spawn_sees(&[Op::Dup2(pair.server, 1)]);
    assert!(list.starts_with("1:") && !list.contains(','), "{list}");
    // addclose, or no action at all on a close-on-exec socket: nothing inherited.
    assert_eq!(spawn_sees(&[Op::Close(pair.server)]).0, "");
    assert_eq!(spawn_sees(&[]).0, "");
    // addopen over stdout after the dup2s, then closefrom(3): fd 0 only, and the memfd (closed
    // by closefrom) is opened again by a rebuilt actions object.
    let open = Op::Open(1, c"/dev/null".into(), libc::O_WRONLY, 0);
    let (list, rebuilt, inheritable, _) = spawn_sees(&[Op::Dup2(pair.server, 0), Op::Dup2(pair.server, 1), open, Op::CloseFrom(3)]);
    assert!(list.starts_with("0:") && !list.contains(','), "{list}");
    assert!(rebuilt && !inheritable, "reopened from /proc, not inherited");
    assert_eq!(refcount(), 1);
    drop(conn);
}

#[test]
fn an_exec_without_the_hook_hands_the_connection_back_and_a_sleeping_peer_follows() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pair = swapped_pair(false);
    assert_eq!(write(pair.client, b"before"), 6);
    let mut buf = [0u8; 16];
    assert_eq!(read(pair.server, &mut buf), 6);
    assert_eq!(table::lookup(pair.server).unwrap().phase(), Phase::Active);
    // The peer sleeps in a read on the rings.
    let client = pair.client;
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        let n = read(client, &mut buf);
        buf[..n.max(0) as usize].to_vec()
    });
    std::thread::sleep(Duration::from_millis(50));
    // An exec whose environment does not preload the hook (it "fails": this process goes on).
    let envp = [std::ptr::null()];
    let started = Instant::now();
    // SAFETY: a valid environment and path.
    let rc = unsafe { exec::with_inherit(envp.as_ptr(), Image::Path(c"/bin/true".as_ptr()), Kind::Exec, |_, _| -1) };
    assert_eq!(rc, -1);
    assert!(started.elapsed() < Duration::from_secs(1), "the peer followed at once ({:?})", started.elapsed());
    assert_eq!(table::lookup(pair.server).unwrap().phase(), Phase::Plain);
    // The new image writes the real socket: the peer reads exactly that, no doorbell byte.
    // SAFETY: the real write, as an image without the hook makes it.
    assert_eq!(unsafe { libc::write(pair.server, b"after".as_ptr().cast(), 5) }, 5);
    assert_eq!(reader.join().unwrap(), b"after");
    // And nothing but the peer's data is left in this end's socket (its doorbells drained).
    assert_eq!(write(pair.client, b"x"), 1);
    let mut byte = [0u8; 4];
    // SAFETY: the real read, as above.
    assert_eq!(unsafe { libc::read(pair.server, byte.as_mut_ptr().cast(), 4) }, 1);
    assert_eq!(byte[0], b'x');
}

#[test]
fn bytes_left_on_the_ring_reach_an_image_without_the_hook_through_the_socket() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pair = swapped_pair(false);
    let sent: Vec<u8> = (0..100u8).collect();
    assert_eq!(write(pair.client, &sent), 100);
    let mut buf = [0u8; 40];
    assert_eq!(read(pair.server, &mut buf), 40);
    // 60 bytes stay on the client's ring; the client sleeps in a read on the rings.
    let client = pair.client;
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        let n = read(client, &mut buf);
        buf[..n.max(0) as usize].to_vec()
    });
    std::thread::sleep(Duration::from_millis(50));
    let envp = [std::ptr::null()];
    let started = Instant::now();
    // SAFETY: a valid environment and path.
    let rc = unsafe { exec::with_inherit(envp.as_ptr(), Image::Path(c"/bin/true".as_ptr()), Kind::Exec, |_, _| -1) };
    assert_eq!(rc, -1);
    assert!(started.elapsed() < Duration::from_secs(1), "the peer followed at once ({:?})", started.elapsed());
    assert_eq!(table::lookup(pair.server).unwrap().phase(), Phase::Plain);
    // The image without the hook reads the socket: the 60 unread bytes, nothing before them.
    // (The peer publishes its hand-back before it sends the replay: the bytes may still be on
    // their way, as for a blocking read of the new image, which would wait for them.)
    let mut rest = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rest.len() < 60 && Instant::now() < deadline {
        let mut p = libc::pollfd { fd: pair.server, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd; the real poll.
        unsafe { libc::poll(&mut p, 1, 100) };
        let mut buf = [0u8; 200];
        // SAFETY: the real read, as an image without the hook makes it.
        let n = unsafe { libc::recv(pair.server, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        rest.extend_from_slice(&buf[..n.max(0) as usize]);
    }
    assert_eq!(rest, &sent[40..]);
    // SAFETY: the real write.
    assert_eq!(unsafe { libc::write(pair.server, b"after".as_ptr().cast(), 5) }, 5);
    assert_eq!(reader.join().unwrap(), b"after");
}
