//! End-to-end: the agent's half of the swap. The test process connects and accepts on a watched
//! path for real (so the kernel reports both), then claims both ends on the real control socket
//! exactly as the preload hook does, and checks what the agent hands out.

use std::{
    io::{Read as _, Write as _},
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::net::{UnixListener, UnixStream},
    },
    process::Command,
    time::{Duration, Instant},
};

use tssx_common::{
    control::{PlainReason, Reply, ReplyKind, Request, Role, CONTROL_SOCKET},
    segment::{End, SegmentState},
};
use tssx_shm::segment::Segment;
use tssx_tests::{agent_bin, ask, claim, require_root, Agent, TempDir};

/// What "at once" means for one claim: an answer that did not wait for anything. The agent's
/// shortest wait is 0.5 s (a server's claim waiting for its client's); a control round trip
/// takes about a millisecond, so this bound holds on a loaded 2-core machine.
const AT_ONCE: Duration = Duration::from_millis(250);

/// A connected pair on `path`: (client, accepted server end).
fn connection(listener: &UnixListener, path: &str) -> (UnixStream, UnixStream) {
    let client = UnixStream::connect(path).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

#[test]
fn both_ends_get_one_segment_and_bytes_cross_it() {
    require_root();
    let dir = TempDir::new("negotiate");
    let path = dir.socket("app.sock");
    let state = dir.join("state");
    let agent = Agent::start(&[&path], &state);
    let listener = UnixListener::bind(&path).unwrap();

    let (client, server) = connection(&listener, &path);
    let (reply, client_fd) = claim(&state, Role::Client, client.as_raw_fd());
    assert_eq!(reply.reply_kind(), Some(ReplyKind::Swap), "{reply:?}");
    let (server_reply, server_fd) = claim(&state, Role::Server, server.as_raw_fd());
    assert_eq!(server_reply.reply_kind(), Some(ReplyKind::Swap), "{server_reply:?}");
    assert_eq!(reply.connection, server_reply.connection);

    // Both fds map the same segment: what the client writes, the server reads.
    let a = Segment::open(client_fd.expect("client got the memfd").as_fd()).unwrap();
    let b = Segment::open(server_fd.expect("server got the memfd").as_fd()).unwrap();
    assert_eq!(b.state(), Some(SegmentState::Active));
    assert!(a.tssx_bit(End::Client) && a.tssx_bit(End::Server));
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
    // Nothing went through the real socket, either way: both ends would block (an error other
    // than EAGAIN, or EOF, would say something else went wrong).
    for (end, socket) in [("client", &client), ("server", &server)] {
        socket.set_nonblocking(true).unwrap();
        let read = (&*socket).read(&mut pong);
        assert!(
            read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "the {end}'s real socket must stay empty: {read:?}"
        );
    }

    // The agent traced the swap and its status shows the bytes moved through shared memory.
    let swapped = agent.wait_for("swapped", &path, 1, Duration::from_secs(5));
    assert_eq!(swapped.len(), 1, "{swapped:?}");
    let out = Command::new(agent_bin()).args(["status", "--json", "--state-dir"]).arg(&state).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(rows[0]["state"], "active");
    assert_eq!(rows[0]["bytes_client_to_server"], payload.len() as u64);
    assert_eq!(rows[0]["bytes_server_to_client"], 4);
    assert_eq!(rows[0]["client"]["fd"], client.as_raw_fd());
    assert_eq!(rows[0]["server"]["fd"], server.as_raw_fd());
    let table = Command::new(agent_bin()).args(["status", "--state-dir"]).arg(&state).output().unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains("1 live connection(s)"));
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

    // Wrong role for the fd, an fd that is no connection, a socket on an unwatched path.
    let started = Instant::now();
    assert_eq!(claim(&state, Role::Server, client.as_raw_fd()).0, Reply::plain(PlainReason::NotSeen));
    assert_eq!(claim(&state, Role::Client, listener.as_raw_fd()).0, Reply::plain(PlainReason::NotSeen));
    let (x, _y) = UnixStream::pair().unwrap();
    assert_eq!(claim(&state, Role::Client, x.as_raw_fd()).0, Reply::plain(PlainReason::NotSeen));
    assert!(started.elapsed() < Duration::from_secs(10));

    // A server whose client never claimed: plain, peer has no hook; at once, since the client
    // (this test process) does not map the hook.
    let started = Instant::now();
    assert_eq!(claim(&state, Role::Server, server.as_raw_fd()).0, Reply::plain(PlainReason::PeerHasNoHook));
    let server_took = started.elapsed();
    assert!(server_took < AT_ONCE, "the server's claim waited for a client without the hook: {server_took:?}");
    // Its client claiming afterwards is answered plain at once (its server reads the real
    // socket), and the same fd cannot be claimed twice (the kernel event is used up).
    let started = Instant::now();
    assert_eq!(claim(&state, Role::Client, client.as_raw_fd()).0, Reply::plain(PlainReason::PeerHasNoHook));
    let client_took = started.elapsed();
    eprintln!("plain answers: server claim {server_took:?}, late client claim {client_took:?}");
    assert!(client_took < AT_ONCE, "the late client's claim was not answered at once: {client_took:?}");
    assert_eq!(claim(&state, Role::Client, client.as_raw_fd()).0, Reply::plain(PlainReason::NotSeen));

    // Malformed and truncated requests are refused and the agent keeps serving.
    assert_eq!(ask(&state, &[0u8; 24]).0, Reply::plain(PlainReason::BadRequest));
    let mut truncated = UnixStream::connect(state.join(CONTROL_SOCKET)).unwrap();
    truncated.write_all(&Request::status().encode()[..10]).unwrap();
    drop(truncated);
    let (c2, s2) = connection(&listener, &path);
    assert_eq!(claim(&state, Role::Client, c2.as_raw_fd()).0.reply_kind(), Some(ReplyKind::Swap));
    assert_eq!(claim(&state, Role::Server, s2.as_raw_fd()).0.reply_kind(), Some(ReplyKind::Swap));
    // Every decision was traced with its reason: claims without kernel evidence (4) and the
    // malformed request as "claim refused", the server without a client claim as "not swapped".
    let plain = agent.events("not");
    assert!(plain.iter().any(|e| e["reason"].as_str().is_some_and(|r| r.contains("peer has no hook"))), "{plain:?}");
    let refused: Vec<_> = agent.events("claim").into_iter().filter(|e| e["message"] == "claim refused").collect();
    assert_eq!(refused.len(), 5, "{refused:?}");
    assert_eq!(
        refused.iter().filter(|e| e["reason"].as_str().is_some_and(|r| r.contains("no matching kernel event"))).count(),
        4,
        "{refused:?}"
    );
    assert!(refused.iter().all(|e| e["uid"] == 0 && e["pid"] == std::process::id()), "{refused:?}");
    assert!(agent.stop().success());
}
