//! Name lookups through glibc (plain std and libc, no tssx code), for the nscd tests and the
//! nscd benchmark: glibc's nscd client talks to nscd's socket from inside libc, so this program
//! exercises a peer that never claims.
//!
//! - `tssx-test-nss check ROUNDS USERS GIDS HOSTS` (comma-separated lists): ROUNDS rounds of
//!   `getpwnam` for every user, `getgrgid` for every gid and `gethostbyname` for every host.
//!   Prints round 0's answers, one line per lookup (`pw root -> root:0:0:...`, `... -> none`),
//!   checks that every later round gives the same answers (exits 1 on the first difference),
//!   then `ok rounds=R lookups=N` and a separate timing line
//!   `time slowest_us=S slowest=WHAT mean_us=M` (not part of the comparison).
//! - `tssx-test-nss bench COUNT USER GID`: COUNT pairs of `getpwnam(USER)` + `getgrgid(GID)`
//!   after a warm-up of up to 100 pairs, each checked by its uid and gid only (so that the
//!   timing is the lookups'); prints the mean microseconds per pair.

use std::{
    ffi::{c_char, CStr, CString},
    time::{Duration, Instant},
};

extern "C" {
    /// glibc's `gethostbyname` (not in the libc crate).
    fn gethostbyname(name: *const c_char) -> *mut libc::hostent;
}

/// The strings of a NULL-terminated `char **` list.
///
/// # Safety
/// `list` is NULL or a valid NULL-terminated array of C strings.
unsafe fn strings(list: *mut *mut c_char) -> Vec<String> {
    let mut out = Vec::new();
    if list.is_null() {
        return out;
    }
    let mut i = 0;
    loop {
        // SAFETY: the caller guarantees a NULL-terminated array; we stop at the NULL.
        let item = unsafe { *list.add(i) };
        if item.is_null() {
            return out;
        }
        // SAFETY: each element is a C string.
        out.push(unsafe { CStr::from_ptr(item) }.to_string_lossy().into_owned());
        i += 1;
    }
}

/// # Safety
/// `s` is a valid C string.
unsafe fn text(s: *const c_char) -> String {
    // SAFETY: the caller guarantees a C string.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

fn passwd(name: &str) -> String {
    let c = CString::new(name).expect("user name");
    // SAFETY: a valid C string; the result points into libc's static buffer, read before the
    // next lookup (the program has one thread).
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return "none".into();
    }
    // SAFETY: a non-NULL result is a valid passwd whose strings are C strings.
    unsafe {
        let pw = &*pw;
        format!("{}:{}:{}:{}:{}:{}", text(pw.pw_name), pw.pw_uid, pw.pw_gid, text(pw.pw_gecos), text(pw.pw_dir), text(pw.pw_shell))
    }
}

fn group(gid: libc::gid_t) -> String {
    // SAFETY: as in `passwd`.
    let gr = unsafe { libc::getgrgid(gid) };
    if gr.is_null() {
        return "none".into();
    }
    // SAFETY: a non-NULL result is a valid group; gr_mem is a NULL-terminated list.
    unsafe {
        let gr = &*gr;
        format!("{}:{}:{}", text(gr.gr_name), gr.gr_gid, strings(gr.gr_mem).join(","))
    }
}

fn host(name: &str) -> String {
    let c = CString::new(name).expect("host name");
    // SAFETY: a valid C string; the result is libc's static hostent, read at once.
    let h = unsafe { gethostbyname(c.as_ptr()) };
    if h.is_null() {
        return "none".into();
    }
    // SAFETY: a non-NULL result is a valid hostent: aliases and addresses are NULL-terminated
    // lists, each address h_length bytes long.
    unsafe {
        let h = &*h;
        let len = h.h_length as usize;
        let addrs: Vec<String> = {
            let mut out = Vec::new();
            let mut i = 0;
            loop {
                let a = *h.h_addr_list.add(i);
                if a.is_null() {
                    break;
                }
                let bytes = std::slice::from_raw_parts(a as *const u8, len);
                out.push(if len == 4 {
                    format!("{}.{}.{}.{}", bytes[0], bytes[1], bytes[2], bytes[3])
                } else {
                    bytes.iter().map(|b| format!("{b:02x}")).collect()
                });
                i += 1;
            }
            out
        };
        format!("{} aliases={} type={} addrs={}", text(h.h_name), strings(h.h_aliases).join(","), h.h_addrtype, addrs.join(","))
    }
}

fn list(arg: Option<&String>) -> Vec<String> {
    arg.map(|a| a.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
}

fn usage() -> ! {
    eprintln!("usage: tssx-test-nss check ROUNDS USERS GIDS HOSTS | tssx-test-nss bench COUNT USER GID");
    std::process::exit(2);
}

fn check(args: &[String]) {
    let rounds: usize = args.first().and_then(|r| r.parse().ok()).unwrap_or_else(|| usage());
    let (users, gids, hosts) = (list(args.get(1)), list(args.get(2)), list(args.get(3)));
    let gids: Vec<libc::gid_t> = gids.iter().map(|g| g.parse().unwrap_or_else(|_| usage())).collect();
    let mut first: Vec<String> = Vec::new();
    let (mut slowest, mut slowest_what, mut total, mut lookups) = (Duration::ZERO, String::new(), Duration::ZERO, 0usize);
    for round in 0..rounds {
        let mut answers = Vec::new();
        let mut timed = |what: String, lookup: &dyn Fn() -> String| {
            let started = Instant::now();
            let answer = lookup();
            let took = started.elapsed();
            total += took;
            lookups += 1;
            if took > slowest {
                slowest = took;
                slowest_what = format!("{}#{round}", what.replace(' ', ":"));
            }
            answers.push(format!("{what} -> {answer}"));
        };
        for u in &users {
            timed(format!("pw {u}"), &|| passwd(u));
        }
        for &g in &gids {
            timed(format!("gr {g}"), &|| group(g));
        }
        for h in &hosts {
            timed(format!("host {h}"), &|| host(h));
        }
        if round == 0 {
            for a in &answers {
                println!("{a}");
            }
            first = answers;
        } else if let Some(i) = (0..first.len()).find(|&i| first[i] != answers[i]) {
            println!("round {round} differs: {:?} after {:?}", answers[i], first[i]);
            std::process::exit(1);
        }
    }
    println!("ok rounds={rounds} lookups={lookups}");
    let mean = if lookups == 0 { 0.0 } else { total.as_secs_f64() * 1e6 / lookups as f64 };
    println!("time slowest_us={} slowest={slowest_what} mean_us={mean:.1}", slowest.as_micros());
}

fn bench(args: &[String]) {
    let count: u32 = args.first().and_then(|c| c.parse().ok()).unwrap_or_else(|| usage());
    let user = CString::new(args.get(1).unwrap_or_else(|| usage()).as_str()).unwrap_or_else(|_| usage());
    let gid: libc::gid_t = args.get(2).and_then(|g| g.parse().ok()).unwrap_or_else(|| usage());
    // One pair, checked cheaply (the answer's uid and gid), so that the timing is the lookups'.
    let pair = || -> Option<(libc::uid_t, libc::gid_t)> {
        // SAFETY: a valid C string; the results point into libc's static buffers, read at once
        // (one thread).
        unsafe {
            let pw = libc::getpwnam(user.as_ptr());
            let gr = libc::getgrgid(gid);
            (!pw.is_null() && !gr.is_null()).then(|| ((*pw).pw_uid, (*gr).gr_gid))
        }
    };
    let Some(want) = pair() else {
        eprintln!("tssx-test-nss bench: {user:?} or gid {gid} not found");
        std::process::exit(1);
    };
    for _ in 0..count.min(100) {
        pair();
    }
    let started = Instant::now();
    for _ in 0..count {
        if pair() != Some(want) {
            eprintln!("tssx-test-nss bench: the answer changed");
            std::process::exit(1);
        }
    }
    println!("{:.3}", started.elapsed().as_secs_f64() * 1e6 / f64::from(count.max(1)));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("check") => check(&args[1..]),
        Some("bench") => bench(&args[1..]),
        _ => usage(),
    }
}
