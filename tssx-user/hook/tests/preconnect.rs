//! epoll registrations made before a connect (see `tssx_hook::preconnect`): a socket that
//! connects to a path the hook does not watch leaves nothing behind (no connection record, no
//! epoll set, so later waits on the instance go straight to the kernel), and the kernel's
//! answers are the application's. No agent runs here, so no path is watched.
use std::os::unix::net::UnixListener;

use libc::c_int;
use tssx_hook::{calls, epoll, preconnect, table};

fn listener() -> (UnixListener, std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tssx-preconnect-{}-{:?}", std::process::id(), std::thread::current().id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    (UnixListener::bind(&path).unwrap(), path, dir)
}

/// A new Unix stream socket made through the hook (marked unconnected).
fn socket() -> c_int {
    // SAFETY: no pointers.
    let fd = unsafe { calls::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    fd
}

fn add(ep: c_int, fd: c_int, events: u32, data: u64) -> c_int {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: a live event.
    unsafe { calls::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) }
}

fn connect(fd: c_int, path: &std::path::Path) -> c_int {
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a live address of its full size.
    unsafe { calls::connect(fd, (&raw const addr).cast(), std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t) }
}

fn epoll() -> c_int {
    // SAFETY: no pointers.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    ep
}

#[test]
fn an_unwatched_socket_registered_before_its_connect_leaves_nothing_behind() {
    let (listener, path, dir) = listener();
    let ep = epoll();
    let fd = socket();
    assert_eq!(add(ep, fd, (libc::EPOLLIN | libc::EPOLLET) as u32, 42), 0);
    assert!(preconnect::kept(fd), "the registration is kept aside");
    assert!(!table::is_tracked(fd) && !epoll::has_set(ep), "no record and no set before the connect");
    assert_eq!(add(ep, fd, libc::EPOLLIN as u32, 42), -1, "a second ADD: the kernel's EEXIST");
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EEXIST));
    assert_eq!(connect(fd, &path), 0);
    assert!(!preconnect::kept(fd) && !table::is_tracked(fd) && !epoll::has_set(ep), "nothing left after the connect");
    // The kernel's registration is the application's: the peer's bytes are reported with its data.
    let (mut server, _) = listener.accept().unwrap();
    std::io::Write::write_all(&mut server, b"x").unwrap();
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: a live array of 4.
    let n = unsafe { calls::epoll_wait(ep, events.as_mut_ptr(), 4, 5000) };
    assert_eq!(n, 1);
    let (got_events, got_data) = (events[0].events, events[0].u64);
    assert_eq!((got_data, got_events & libc::EPOLLIN as u32 != 0), (42, true));
    // SAFETY: our fds.
    unsafe {
        calls::close(fd);
        calls::close(ep);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn mod_and_del_before_the_connect_update_the_kept_registration() {
    let (_listener, path, dir) = listener();
    let ep = epoll();
    let fd = socket();
    assert_eq!(add(ep, fd, libc::EPOLLIN as u32, 1), 0);
    let mut ev = libc::epoll_event { events: libc::EPOLLOUT as u32, u64: 2 };
    // SAFETY: a live event.
    assert_eq!(unsafe { calls::epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, &mut ev) }, 0);
    assert!(preconnect::kept(fd));
    // SAFETY: DEL takes no event.
    assert_eq!(unsafe { calls::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) }, 0);
    assert!(!preconnect::kept(fd), "deleted");
    // SAFETY: as above.
    assert_eq!(unsafe { calls::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) }, -1, "the kernel's ENOENT");
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENOENT));
    assert_eq!(connect(fd, &path), 0);
    assert!(!table::is_tracked(fd) && !epoll::has_set(ep));
    // SAFETY: our fds.
    unsafe {
        calls::close(fd);
        calls::close(ep);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// One instance under several numbers (a duplicate of the epoll fd, as mio registers through):
/// `MOD` and `DEL` through another number than the `ADD`'s change the kept registration, as
/// they change the kernel's.
#[test]
fn mod_and_del_through_a_duplicate_of_the_instance_update_the_kept_registration() {
    let (_listener, path, dir) = listener();
    // SAFETY: no pointers; through the hook, which notes the instance and its duplicate.
    let ep = unsafe { calls::epoll_create1(libc::EPOLL_CLOEXEC) };
    // SAFETY: as above.
    let dup = unsafe { calls::fcntl(ep, libc::F_DUPFD_CLOEXEC, 0) };
    assert!(ep >= 0 && dup >= 0);
    let fd = socket();
    assert_eq!(add(dup, fd, libc::EPOLLIN as u32, 1), 0);
    assert!(preconnect::kept(fd));
    let mut ev = libc::epoll_event { events: libc::EPOLLOUT as u32, u64: 2 };
    // SAFETY: a live event.
    assert_eq!(unsafe { calls::epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, &mut ev) }, 0);
    assert!(preconnect::kept(fd) && !table::is_tracked(fd), "still the one kept registration");
    // SAFETY: DEL takes no event.
    assert_eq!(unsafe { calls::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) }, 0);
    assert!(!preconnect::kept(fd), "deleted through the other number");
    assert_eq!(connect(fd, &path), 0);
    assert!(!table::is_tracked(fd));
    // SAFETY: our fds.
    unsafe {
        calls::close(fd);
        calls::close(dup);
        calls::close(ep);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn what_the_slot_cannot_hold_gets_the_record() {
    let (_listener, path, dir) = listener();
    let (ep1, ep2) = (epoll(), epoll());
    // Two instances: the second registration gives the socket its record with both.
    let fd = socket();
    assert_eq!(add(ep1, fd, libc::EPOLLIN as u32, 1), 0);
    assert_eq!(add(ep2, fd, libc::EPOLLIN as u32, 1), 0);
    assert!(!preconnect::kept(fd) && table::is_tracked(fd) && epoll::has_set(ep1) && epoll::has_set(ep2));
    // A one-shot registration: the record follows the kernel's disarming.
    let one = socket();
    assert_eq!(add(ep1, one, (libc::EPOLLIN | libc::EPOLLONESHOT) as u32, 2), 0);
    assert!(!preconnect::kept(one) && table::is_tracked(one));
    // The instance closed before the connect: its registrations go the general way first.
    let ep3 = epoll();
    let late = socket();
    assert_eq!(add(ep3, late, libc::EPOLLIN as u32, 3), 0);
    assert!(preconnect::kept(late) && preconnect::names_instance(ep3));
    // SAFETY: our fd.
    unsafe { calls::close(ep3) };
    assert!(!preconnect::kept(late) && !preconnect::names_instance(ep3) && !epoll::has_set(ep3));
    // A dup: the record follows both fds.
    let dupped = socket();
    assert_eq!(add(ep2, dupped, libc::EPOLLIN as u32, 4), 0);
    // SAFETY: our fd.
    let copy = unsafe { calls::dup(dupped) };
    assert!(copy >= 0 && !preconnect::kept(dupped) && table::is_tracked(dupped) && table::is_tracked(copy));
    // Unwatched connects drop every record.
    for s in [fd, one, late, copy] {
        assert_eq!(connect(s, &path), 0);
        assert!(!table::is_tracked(s), "fd {s}");
    }
    // SAFETY: our fds.
    unsafe {
        for s in [fd, one, late, dupped, copy, ep1, ep2] {
            calls::close(s);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
