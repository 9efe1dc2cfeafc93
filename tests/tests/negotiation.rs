//! End-to-end: the agent's half of the swap. The test process connects and accepts on a watched
//! path for real (so the kernel reports both), then claims both ends on the real control socket
//! exactly as the preload hook does, and checks what the agent hands out: the first claim of a
//! connection is held, unanswered; the second gets the segment, and so does the first, at once.

use std::{
    io::{Read as _, Write as _},
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::{
            net::{UnixListener, UnixStream},
            process::CommandExt as _,
        },
    },
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use serde_json::Value;
use tssx_common::{
    control::{PlainReason, Reply, ReplyKind, Request, Role, CLAIM_FORKED, CONTROL_SOCKET},
    segment::{End, SegmentState, JOIN_MAPPED},
};
use tssx_shm::segment::Segment;
use tssx_tests::{agent_bin, ask, await_answer, claim, monotonic_ns, require_root, send_claim, wait_until, Agent, Answer, TempDir};

/// What "at once" means for one claim: an answer that did not wait for anything. A control round
/// trip takes about a millisecond; the agent's only waits are the hooks' (2 s before a hook
/// gives a claim up), so this bound holds on a loaded 2-core machine while a wait cannot hide
/// in it.
const AT_ONCE: Duration = Duration::from_millis(250);
/// How long a held claim is watched for an answer that must not come.
const SILENCE: Duration = Duration::from_millis(300);

/// A connected pair on `path`: (client, accepted server end).
fn connection(listener: &UnixListener, path: &str) -> (UnixStream, UnixStream) {
    let client = UnixStream::connect(path).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// Sends a claim and checks that the agent holds it: no answer, the connection open.
fn held_claim(state: &std::path::Path, role: Role, fd: i32) -> UnixStream {
    let stream = send_claim(state, role, fd, 0);
    match await_answer(&stream, SILENCE) {
        Answer::Nothing => stream,
        other => panic!("a first claim is held, unanswered: got {other:?}"),
    }
}

/// The second claim of a connection: answered at once with the segment; so is the held one,
/// whose connection is closed after the answer. Returns the connection id and both segments.
fn pair(state: &std::path::Path, held: UnixStream, role: Role, fd: i32) -> (u64, Segment, Segment) {
    let started = Instant::now();
    let (reply, second_fd) = claim(state, role, fd);
    let took = started.elapsed();
    assert_eq!(reply.reply_kind(), Some(ReplyKind::Swap), "{reply:?}");
    eprintln!("second claim answered (both ends paired) in {took:?}");
    assert!(took < AT_ONCE, "the second claim was not answered at once: {took:?}");
    let (held_reply, held_fd) = await_answer(&held, AT_ONCE).reply();
    assert_eq!(held_reply, reply, "both ends get the same connection");
    assert!(matches!(await_answer(&held, AT_ONCE), Answer::Closed), "the held claim's connection is closed after its answer");
    let open = |fd: Option<std::os::fd::OwnedFd>| Segment::open(fd.expect("the memfd comes with the reply").as_fd()).unwrap();
    (reply.connection, open(held_fd), open(second_fd))
}

/// What the two hooks do in a segment when they migrate: map it (refcount, joined), become
/// ready, switch their writes onto the rings after `switch_at[end]` socket bytes (the first
/// switch commits: `Pending -> Active`), and record when both directions were on the rings.
fn migrate_as_the_hooks(segment: &Segment, switch_at: [u64; 2]) {
    for end in [End::Client, End::Server] {
        let (header, line) = (segment.header(), &segment.header().ends[end.index()]);
        // Release, then SeqCst: as the hook's join, ready and switch.
        header.refcount[end.index()].store(1, Ordering::Release);
        line.joined.store(JOIN_MAPPED, Ordering::SeqCst);
        line.sock_written.store(switch_at[end.index()], Ordering::Relaxed);
        line.ready.store(1, Ordering::SeqCst);
        line.switch_at.store(switch_at[end.index()], Ordering::SeqCst);
    }
    segment.transition(SegmentState::Pending, SegmentState::Active).unwrap();
    for end in [End::Client, End::Server] {
        // Relaxed: a timestamp, as the hook stores it.
        segment.header().ends[end.index()].active_ns.store(monotonic_ns(), Ordering::Relaxed);
    }
}

fn status_rows(state: &std::path::Path) -> Vec<Value> {
    let out = Command::new(agent_bin()).args(["status", "--json", "--state-dir"]).arg(state).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn both_ends_get_one_segment_and_bytes_cross_it() {
    require_root();
    let dir = TempDir::new("negotiate");
    let path = dir.socket("app.sock");
    let state = dir.join("state");
    let agent = Agent::start(&[&path], &state);
    let listener = UnixListener::bind(&path).unwrap();

    let connected_ns = monotonic_ns();
    let (client, server) = connection(&listener, &path);
    let held = held_claim(&state, Role::Client, client.as_raw_fd());
    assert_eq!(agent.stats()["held_claims"], 1);
    let (id, a, b) = pair(&state, held, Role::Server, server.as_raw_fd());
    let stats = agent.stats();
    assert_eq!((stats["held_claims"].as_u64(), stats["paired"].as_u64(), stats["claims"].as_u64()), (Some(0), Some(1), Some(2)), "{stats}");

    // Both fds map the same segment, handed out migrating, with both TSSX bits; the hooks set
    // their own refcounts when they map it.
    assert_eq!(b.state(), Some(SegmentState::Pending));
    assert!(a.tssx_bit(End::Client) && a.tssx_bit(End::Server));
    a.header().shut.0[0].store(5, Ordering::SeqCst);
    assert_eq!(b.header().shut.0[0].load(Ordering::SeqCst), 5, "one segment");
    a.header().shut.0[0].store(0, Ordering::SeqCst);
    // Acquire: a snapshot of the counts as the agent left them.
    assert!(a.header().refcount.iter().all(|r| r.load(Ordering::Acquire) == 0));
    let paired = agent.await_events("paired", &path, 1, Duration::from_secs(5));
    let me = format!("{}/", std::process::id());
    assert_eq!(paired[0]["connection"], id);
    assert!(paired[0]["client"].as_str().unwrap().starts_with(&me) && paired[0]["server"].as_str().unwrap().starts_with(&me), "{paired:?}");
    assert_eq!(status_rows(&state)[0]["state"], "migrating");

    // The hooks migrate: the client after 3 socket bytes, the server after none.
    migrate_as_the_hooks(&a, [3, 0]);
    let swapped = agent.await_events("swapped", &path, 1, Duration::from_secs(2));
    let since_connect_us = (monotonic_ns() - connected_ns) / 1000;
    assert_eq!((swapped[0]["switched_client_to_server"].as_u64(), swapped[0]["switched_server_to_client"].as_u64()), (Some(3), Some(0)));
    let migrated_after = swapped[0]["migrated_after_us"].as_u64().unwrap();
    assert!(migrated_after > 0 && migrated_after <= since_connect_us, "{migrated_after} us, connected {since_connect_us} us ago");
    assert!(swapped[0]["message"].as_str().unwrap().starts_with(&format!("swapped {me}")), "{swapped:?}");

    // What the client writes on its ring, the server reads.
    // SAFETY: one producer and one consumer per ring, dropped before the segments.
    let (mut tx, mut rx) = unsafe { (a.producer(End::Client), b.consumer(End::Server)) };
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut got = Vec::new();
    let mut sent = 0;
    let mut buf = vec![0u8; 4096];
    while got.len() < payload.len() {
        sent += tx.write(&payload[sent..]).bytes;
        let n = rx.read(&mut buf).bytes;
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, payload);
    // SAFETY: as above.
    let (mut back_tx, mut back_rx) = unsafe { (b.producer(End::Server), a.consumer(End::Client)) };
    assert_eq!(back_tx.write(b"pong").bytes, 4);
    let mut pong = [0u8; 8];
    assert_eq!(back_rx.read(&mut pong).bytes, 4);
    assert_eq!(&pong[..4], b"pong");
    // Nothing went through the real socket, either way.
    for (end, socket) in [("client", &client), ("server", &server)] {
        socket.set_nonblocking(true).unwrap();
        let read = (&*socket).read(&mut pong);
        assert!(
            read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "the {end}'s real socket must stay empty: {read:?}"
        );
    }

    // Its status: swapped, the switch positions, the bytes through shared memory, both ends.
    let rows = status_rows(&state);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "swapped");
    assert_eq!((rows[0]["switched_client_to_server"].as_u64(), rows[0]["switched_server_to_client"].as_u64()), (Some(3), Some(0)));
    assert_eq!(rows[0]["bytes_client_to_server"], payload.len() as u64);
    assert_eq!(rows[0]["bytes_server_to_client"], 4);
    assert_eq!(rows[0]["client"]["fd"], client.as_raw_fd());
    assert_eq!(rows[0]["server"]["fd"], server.as_raw_fd());
    let table = Command::new(agent_bin()).args(["status", "--state-dir"]).arg(&state).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("1 live connection(s)") && table.contains("swapped"), "{table}");

    // Both ends close (their refcounts reach 0): freed, with the bytes each way.
    a.header().refcount.iter().for_each(|r| r.store(0, Ordering::Release));
    let closed = agent.await_events("closed", &path, 1, Duration::from_secs(2));
    assert_eq!((closed[0]["bytes_client_to_server"].as_u64(), closed[0]["bytes_server_to_client"].as_u64()), (Some(100_000), Some(4)));
    let stats = agent.stats();
    assert_eq!((stats["swapped"].as_u64(), stats["given_up"].as_u64(), stats["live_segments"].as_u64()), (Some(1), Some(0), Some(0)));
    assert!(agent.stop().success());
}

/// The kernel side parks each watched call between its enter and its exit in its thread's slot
/// of a per-thread array, or (thread ids beyond the array: `pid_max` raised after the agent
/// started) in a hash map. Either way (with one slot, every thread here takes the hash map),
/// each connect and accept reaches the agent as an event (kept until a claim uses it), the
/// claims pair using both, and nothing is left parked.
#[test]
fn calls_of_threads_beyond_the_per_thread_array_are_seen_too() {
    require_root();
    for args in [&["--syscall-tracepoints"][..], &["--syscall-tracepoints", "--parked-slots", "1"]] {
        events_reach_the_agent_and_pair(args);
    }
}

fn events_reach_the_agent_and_pair(agent_args: &[&str]) {
    let dir = TempDir::new("negotiate-parked");
    let path = dir.socket("app.sock");
    let state = dir.join("state");
    let agent = Agent::start_with(&[&path], &state, agent_args);
    let listener = UnixListener::bind(&path).unwrap();

    let connections: Vec<_> = (0..3).map(|_| connection(&listener, &path)).collect();
    // (The agent reads per-connection events on its tick.)
    wait_until(Duration::from_secs(5), "a connect and an accept event per connection", || agent.stats()["unclaimed_events"] == 6);
    for (round, (client, server)) in connections.iter().enumerate() {
        let held = held_claim(&state, Role::Client, client.as_raw_fd());
        let (_, a, _) = pair(&state, held, Role::Server, server.as_raw_fd());
        assert!(a.tssx_bit(End::Client) && a.tssx_bit(End::Server), "{agent_args:?} round {round}");
    }
    let stats = agent.stats();
    assert_eq!(
        (stats["paired"].as_u64(), stats["unclaimed_events"].as_u64()),
        (Some(3), Some(0)),
        "{agent_args:?}: the pairs used the events: {stats}"
    );
    wait_until(Duration::from_secs(5), "no call left parked", || agent.stats()["bpf_map_entries"]["PARKED"] == 0);
    assert!(agent.stop().success());
}

/// Either end may claim first, and a client may claim before its server accepted (its
/// connection waits in the accept queue): the first claim is held until the other end's.
#[test]
fn either_end_may_claim_first_even_before_the_accept() {
    require_root();
    let dir = TempDir::new("negotiate-order");
    let path = dir.socket("app.sock");
    let state = dir.join("state");
    let agent = Agent::start(&[&path], &state);
    let listener = UnixListener::bind(&path).unwrap();

    let (client, server) = connection(&listener, &path);
    let held = held_claim(&state, Role::Server, server.as_raw_fd());
    let (first, _, _) = pair(&state, held, Role::Client, client.as_raw_fd());

    let early = UnixStream::connect(&path).unwrap();
    let held = held_claim(&state, Role::Client, early.as_raw_fd());
    std::thread::sleep(Duration::from_millis(100));
    let (accepted, _) = listener.accept().unwrap();
    let (second, a, _) = pair(&state, held, Role::Server, accepted.as_raw_fd());
    assert_ne!(first, second);
    assert!(a.tssx_bit(End::Client) && a.tssx_bit(End::Server));
    let rows = status_rows(&state);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["state"] == "migrating"), "{rows:?}");
    assert_eq!(agent.events_on("paired", &path).len(), 2);
    assert!(agent.stop().success());
}

#[test]
fn claims_the_kernel_did_not_see_are_refused() {
    require_root();
    let dir = TempDir::new("refuse");
    let path = dir.socket("app.sock");
    let state = dir.join("state");
    let agent = Agent::start(&[&path], &state);
    let listener = UnixListener::bind(&path).unwrap();
    let (client, server) = connection(&listener, &path);

    // Wrong role for the fd, an fd that is no connection, a socket on an unwatched path: refused
    // at once.
    for (role, fd, what) in [
        (Role::Server, client.as_raw_fd(), "the client's socket claimed as a server"),
        (Role::Client, listener.as_raw_fd(), "the listener"),
    ] {
        let started = Instant::now();
        assert_eq!(claim(&state, role, fd).0, Reply::plain(PlainReason::NotSeen), "{what}");
        assert!(started.elapsed() < AT_ONCE, "{what}: refused after {:?}", started.elapsed());
    }
    let (x, _y) = UnixStream::pair().unwrap();
    assert_eq!(claim(&state, Role::Client, x.as_raw_fd()).0, Reply::plain(PlainReason::NotSeen));
    assert_eq!(claim(&state, Role::Server, 1 << 20).0, Reply::plain(PlainReason::NotSeen));

    // A server whose client never claims: held until its hook gives up (it closes the claim's
    // connection), then dropped at once: nothing is left held.
    let held = held_claim(&state, Role::Server, server.as_raw_fd());
    drop(held);
    wait_until(AT_ONCE, "the abandoned claim dropped", || agent.stats()["held_claims"] == 0);
    assert_eq!(agent.stats()["peer_never_claimed"], 1);
    // Its client claiming afterwards is held in turn (the server's claim is over), and is not
    // paired with anything.
    let late = held_claim(&state, Role::Client, client.as_raw_fd());
    drop(late);

    // Malformed and truncated requests are refused and the agent keeps serving.
    assert_eq!(ask(&state, &[0u8; 24]).0, Reply::plain(PlainReason::BadRequest));
    let mut truncated = UnixStream::connect(state.join(CONTROL_SOCKET)).unwrap();
    truncated.write_all(&Request::status().encode()[..10]).unwrap();
    drop(truncated);
    let (c2, s2) = connection(&listener, &path);
    let held = held_claim(&state, Role::Client, c2.as_raw_fd());
    pair(&state, held, Role::Server, s2.as_raw_fd());
    // Every refusal was traced with its reason, the caller's pid and uid: 4 claims without
    // kernel evidence and the malformed request.
    let refused: Vec<_> = agent.events("claim").into_iter().filter(|e| e["message"] == "claim refused").collect();
    assert_eq!(refused.len(), 5, "{refused:?}");
    assert_eq!(
        refused.iter().filter(|e| e["reason"].as_str().is_some_and(|r| r.contains("no matching kernel event"))).count(),
        4,
        "{refused:?}"
    );
    assert!(refused.iter().all(|e| e["uid"] == 0 && e["pid"] == std::process::id()), "{refused:?}");
    let stats = agent.stats();
    assert_eq!((stats["refused"].as_u64(), stats["paired"].as_u64()), (Some(5), Some(1)), "{stats}");
    assert!(agent.events_on("paired", &path).len() == 1);
    assert!(agent.stop().success());
}

/// A process that forked while its connection was plain (the claim carries `CLAIM_FORKED`) is
/// told to retry while another process of its family holds the same socket (here its child,
/// then a grandchild),
/// and paired once it is the only holder: PostgreSQL's postmaster accepts, forks a backend and
/// closes its own copy; the backend's claim comes a little later.
#[test]
fn a_forked_claimant_is_retried_while_a_relative_holds_the_socket() {
    require_root();
    let dir = TempDir::new("negotiate-fork");
    let path = dir.socket("app.sock");
    let state = dir.join("state");
    let agent = Agent::start(&[&path], &state);
    let listener = UnixListener::bind(&path).unwrap();
    let (client, server) = connection(&listener, &path);
    let fd = server.as_raw_fd();
    let mut child = Command::new("sleep");
    child.arg("60");
    // SAFETY: fcntl is async-signal-safe; it clears close-on-exec on the server socket in the
    // child only, so the child holds it.
    unsafe {
        child.pre_exec(move || {
            libc::fcntl(fd, libc::F_SETFD, 0);
            Ok(())
        })
    };
    let mut child = child.spawn().unwrap();
    let inode = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    let child_holds = || {
        std::fs::read_dir(format!("/proc/{}/fd", child.id()))
            .unwrap()
            .flatten()
            .any(|f| std::fs::read_link(f.path()).is_ok_and(|l| l == inode))
    };
    wait_until(Duration::from_secs(5), "the child to hold the socket", child_holds);

    let started = Instant::now();
    let retry = send_claim(&state, Role::Server, fd, CLAIM_FORKED);
    let (reply, memfd) = await_answer(&retry, AT_ONCE).reply();
    assert_eq!((reply, memfd.is_none()), (Reply::retry(PlainReason::NotSoleHolder), true), "after {:?}", started.elapsed());
    assert_eq!(agent.stats()["retried"], 1);
    // Without the flag, nothing is checked: the claim is held (and dropped when its connection
    // closes).
    drop(held_claim(&state, Role::Server, fd));
    wait_until(AT_ONCE, "the unflagged claim dropped", || agent.stats()["held_claims"] == 0);

    child.kill().unwrap();
    child.wait().unwrap();

    // A grandchild holds it (a shell ran the command in a child of its own, and closed its
    // copy): still not the only holder.
    // (bash: a redirection of an fd above 9, which dash cannot write.)
    let mut shell = Command::new("bash");
    shell.args(["-c", &format!("sleep 60 & exec {fd}<&-; wait")]);
    // SAFETY: as above.
    unsafe {
        shell.pre_exec(move || {
            libc::fcntl(fd, libc::F_SETFD, 0);
            Ok(())
        })
    };
    let mut shell = shell.spawn().unwrap();
    let holds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .is_ok_and(|fds| fds.flatten().any(|f| std::fs::read_link(f.path()).is_ok_and(|l| l == inode)))
    };
    let grandchild = || {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", shell.id())).unwrap_or_default();
        children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()).find(|&c| holds(c))
    };
    wait_until(Duration::from_secs(5), "only the grandchild to hold the socket", || grandchild().is_some() && !holds(shell.id()));
    let retry = send_claim(&state, Role::Server, fd, CLAIM_FORKED);
    assert_eq!(await_answer(&retry, AT_ONCE).reply().0, Reply::retry(PlainReason::NotSoleHolder));
    if let Some(pid) = grandchild() {
        // SAFETY: a plain kill of our grandchild.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    shell.wait().unwrap();

    let held = held_claim(&state, Role::Client, client.as_raw_fd());
    let forked = send_claim(&state, Role::Server, fd, CLAIM_FORKED);
    let (reply, memfd) = await_answer(&forked, AT_ONCE).reply();
    assert_eq!((reply.reply_kind(), memfd.is_some()), (Some(ReplyKind::Swap), true), "{reply:?}");
    assert_eq!(await_answer(&held, AT_ONCE).reply().0, reply);
    assert!(agent.stop().success());
}
