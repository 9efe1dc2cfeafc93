//! The user copy and its fault handler (issue 13 item 4): a copy that runs into an unmapped,
//! PROT_NONE or past-the-end-of-file page stops there and says how far it got, and the
//! application's own SIGSEGV handler still runs for faults that are not the copy's. (Its own
//! test binary: the dispositions are per process.)

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::SeqCst};

use libc::{c_int, c_void, siginfo_t};
use tssx_hook::{fault, signals};
use tssx_shm::ucopy;

const PAGE: usize = 4096;

/// Two pages, the second PROT_NONE (or unmapped): the address of the first.
fn two_pages(unmap_second: bool) -> *mut u8 {
    // SAFETY: a fresh anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), 2 * PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    assert_ne!(p, libc::MAP_FAILED);
    let second = p.cast::<u8>().wrapping_add(PAGE).cast::<c_void>();
    // SAFETY: the second page of our own mapping.
    let rc = unsafe {
        if unmap_second {
            libc::munmap(second, PAGE)
        } else {
            libc::mprotect(second, PAGE, libc::PROT_NONE)
        }
    };
    assert_eq!(rc, 0);
    p.cast()
}

/// A shared mapping of an empty memfd: touching it is SIGBUS.
fn past_end_of_file() -> *mut u8 {
    // SAFETY: a new memfd, mapped once; the fd is closed after (the mapping keeps the file).
    unsafe {
        let fd = libc::memfd_create(c"tssx-fault-test".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        let p = libc::mmap(std::ptr::null_mut(), PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
        assert_ne!(p, libc::MAP_FAILED);
        libc::close(fd);
        p.cast()
    }
}

#[test]
fn a_copy_stops_at_the_bad_page_and_says_how_far_it_got() {
    fault::arm();
    assert!(fault::armed(), "SIGSEGV and SIGBUS are the hook's once armed");
    let src: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
    for unmap in [false, true] {
        let p = two_pages(unmap);
        let dst = p.wrapping_add(PAGE - 50);
        // SAFETY: 50 good bytes, then the bad page (the copy survives it); `src` is ours.
        let left = unsafe { ucopy::copy(dst, src.as_ptr(), 100) };
        assert_eq!(left, 50, "into a buffer that runs into a bad page (unmapped: {unmap})");
        // SAFETY: the 50 good bytes of our mapping.
        assert_eq!(unsafe { std::slice::from_raw_parts(dst, 50) }, &src[..50]);
        let mut back = [0u8; 100];
        // SAFETY: as above, the other way.
        let left = unsafe { ucopy::copy(back.as_mut_ptr(), dst, 100) };
        assert_eq!(left, 50, "out of a buffer that runs into a bad page");
        assert_eq!(&back[..50], &src[..50]);
        // Wholly in the bad page.
        // SAFETY: as above.
        assert_eq!(unsafe { ucopy::copy(p.wrapping_add(PAGE), src.as_ptr(), 10) }, 10);
        assert_eq!(unsafe { ucopy::to_user(p.wrapping_add(PAGE + 8), &src[..4]) }, Err(0));
        assert_eq!(unsafe { ucopy::read(p.wrapping_add(PAGE).cast::<u64>()) }, None);
        assert_eq!(
            unsafe { ucopy::read(p.wrapping_add(PAGE - 8).cast::<u64>()) },
            Some(u64::from_ne_bytes(src[42..50].try_into().unwrap()))
        );
        assert!(!unsafe { ucopy::write(p.wrapping_add(PAGE - 4).cast::<u64>(), 7) });
    }
    // Exact at every distance from the bad page, for short copies (the wide moves, then the
    // byte loop) and long ones (`rep movsb`), both ways.
    let big: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
    let p = two_pages(false);
    for good in [0usize, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 100, 1000, 2047, 2048, 2049, 3000, PAGE] {
        for len in [1usize, 8, 16, 64, 100, 2047, 2048, 3000] {
            let good = good.min(PAGE);
            let at = p.wrapping_add(PAGE - good);
            let want_left = len.saturating_sub(good);
            // SAFETY: `good` bytes of our mapping, then the bad page (the copy survives it).
            let left = unsafe { ucopy::copy(at, big.as_ptr(), len) };
            assert_eq!(left, want_left, "into: {good} good bytes, {len} to copy");
            // SAFETY: the bytes just copied, in our mapping.
            assert_eq!(unsafe { std::slice::from_raw_parts(at, len - left) }, &big[..len - left]);
            let mut back = vec![0u8; len];
            // SAFETY: as above, the other way.
            let left = unsafe { ucopy::copy(back.as_mut_ptr(), at, len) };
            assert_eq!(left, want_left, "out of: {good} good bytes, {len} to copy");
            assert_eq!(&back[..len - left], &big[..len - left]);
        }
    }
    let bus = past_end_of_file();
    // SAFETY: the SIGBUS page (the copy survives it).
    assert_eq!(unsafe { ucopy::copy(bus, src.as_ptr(), 64) }, 64, "a file mapping past its end: SIGBUS, caught");
    let mut back = [0u8; 8];
    // SAFETY: as above.
    assert_eq!(unsafe { ucopy::from_user(&mut back, bus) }, Err(0));
}

/// The page the application's handler makes writable again, and how often it ran.
static FIX_PAGE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static RAN: AtomicUsize = AtomicUsize::new(0);
static SEEN_ADDR: AtomicUsize = AtomicUsize::new(0);

extern "C" fn applications_handler(sig: c_int, info: *mut siginfo_t, _ctx: *mut c_void) {
    assert_eq!(sig, libc::SIGSEGV);
    // SAFETY: SA_SIGINFO: the kernel's siginfo.
    SEEN_ADDR.store(unsafe { (*info).si_addr() } as usize, SeqCst);
    RAN.fetch_add(1, SeqCst);
    let page = FIX_PAGE.load(SeqCst);
    // SAFETY: our own test page, made writable (mprotect is async-signal-safe).
    unsafe { libc::mprotect(page.cast(), PAGE, libc::PROT_READ | libc::PROT_WRITE) };
}

#[test]
fn the_applications_handler_still_runs_for_its_own_faults() {
    fault::arm();
    // SAFETY: plain data; the application's handler, installed through the hook's sigaction
    // (which records it: SIGSEGV is the hook's).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = applications_handler as extern "C" fn(c_int, *mut siginfo_t, *mut c_void) as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        assert_eq!(signals::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()), 0);
    }
    let p = two_pages(false);
    let bad = p.wrapping_add(PAGE);
    FIX_PAGE.store(bad, SeqCst);
    // A fault of the application's (not the copy's): its handler runs, makes the page
    // writable, and the write is done again.
    // SAFETY: a write that faults once; the handler makes it valid.
    unsafe { std::ptr::write_volatile(bad, 42) };
    assert_eq!(RAN.load(SeqCst), 1, "the application's handler ran");
    assert_eq!(SEEN_ADDR.load(SeqCst), bad as usize, "with the fault's siginfo");
    // SAFETY: the page is writable now.
    assert_eq!(unsafe { std::ptr::read_volatile(bad) }, 42);
    // A copy's fault never reaches it.
    let q = two_pages(true);
    // SAFETY: the bad page of our mapping (the copy survives it).
    assert_eq!(unsafe { ucopy::copy(q.wrapping_add(PAGE), [1u8; 8].as_ptr(), 8) }, 8);
    assert_eq!(RAN.load(SeqCst), 1, "the copy's fault is the hook's");
    // The application sees its own handler as the disposition.
    let (handler, flags) = signals::application_disposition(libc::SIGSEGV).expect("disposition");
    assert_eq!(handler, applications_handler as extern "C" fn(c_int, *mut siginfo_t, *mut c_void) as usize);
    assert_ne!(flags & libc::SA_SIGINFO, 0);
}
