//! Property-based fuzzing of the control-protocol decoders: whatever bytes a local process sends
//! to the agent's control socket, `Request::decode` and `Reply::decode` never panic, accept
//! exactly the records the protocol allows, and re-encode what they accept to the same bytes.

use proptest::prelude::*;
use tssx_common::control::{
    DecodeError, PlainReason, Reply, ReplyKind, Request, RequestKind, Role, CONTROL_MAGIC, CONTROL_VERSION, REPLY_SIZE, REQUEST_SIZE,
};

fn record(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// The protocol's rule for a request record with a valid header, written independently of the
/// decoder: kind 1, 2 or 4 (3 was the retired `Decline`); claims have role 0 or 1 and fd >= 0;
/// status and stats role 0 and fd -1; flags only on claims, and only the forked bit (1).
fn request_allowed(kind: u32, role: u32, fd: i32, flags: u32) -> bool {
    match kind {
        1 => role <= 1 && fd >= 0 && flags <= 1,
        2 | 4 => role == 0 && fd == -1 && flags == 0,
        _ => false,
    }
}

/// Mostly small values (the interesting ones) and sometimes any value.
fn field() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..8, Just(u32::MAX), any::<u32>()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    /// Arbitrary bytes of any length up to a few records: no panic; anything accepted is exactly
    /// a well-formed record.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        match Request::decode(&bytes) {
            Ok(request) => {
                prop_assert_eq!(bytes.len(), REQUEST_SIZE);
                prop_assert_eq!(&request.encode()[..], &bytes[..]);
            }
            Err(DecodeError::Size(n)) => prop_assert!(n == bytes.len() && n != REQUEST_SIZE),
            Err(_) => prop_assert_eq!(bytes.len(), REQUEST_SIZE),
        }
        if let Ok(reply) = Reply::decode(&bytes) {
            prop_assert_eq!(&reply.encode()[..], &bytes[..]);
        }
    }

    /// Requests with a valid header and arbitrary fields: accepted if and only if the protocol
    /// allows them, and then round-trip.
    #[test]
    fn requests_are_accepted_exactly_when_allowed(kind in field(), role in field(), fd in field(), flags in prop_oneof![Just(0u32), Just(1u32), any::<u32>()]) {
        let bytes = record(&[CONTROL_MAGIC, CONTROL_VERSION, kind, role, fd, flags]);
        let decoded = Request::decode(&bytes);
        prop_assert_eq!(decoded.is_ok(), request_allowed(kind, role, fd as i32, flags), "{:?}", decoded);
        if let Ok(request) = decoded {
            prop_assert_eq!(request.encode().to_vec(), bytes);
            prop_assert!(request.request_kind().is_some());
            if request.request_kind() == Some(RequestKind::Claim) {
                prop_assert!(request.request_role().is_some());
            }
        }
    }

    /// A wrong magic or version is refused whatever follows.
    #[test]
    fn foreign_headers_are_refused(magic in any::<u32>(), version in any::<u32>(), rest in proptest::collection::vec(any::<u32>(), 4)) {
        prop_assume!(magic != CONTROL_MAGIC || version != CONTROL_VERSION);
        let mut ws = vec![magic, version];
        ws.extend(&rest);
        prop_assert!(Request::decode(&record(&ws)).is_err());
        prop_assert!(Reply::decode(&record(&ws)).is_err());
    }

    /// Every truncation or extension of a valid request is refused by size.
    #[test]
    fn truncated_and_oversized_requests_are_refused(fd in 0i32.., server in any::<bool>(), cut in 0usize..REQUEST_SIZE, extra in proptest::collection::vec(any::<u8>(), 1..64)) {
        let role = if server { Role::Server } else { Role::Client };
        let good = Request::claim(role, fd).encode();
        prop_assert_eq!(Request::decode(&good[..cut]), Err(DecodeError::Size(cut)));
        let mut long = good.to_vec();
        long.extend(&extra);
        prop_assert_eq!(Request::decode(&long), Err(DecodeError::Size(long.len())));
        prop_assert_eq!(Request::decode(&good), Ok(Request::claim(role, fd)));
    }

    /// Replies with a valid header: swaps carry no reason, plain and retry replies a known
    /// non-zero one (5, the retired `Declined`, is not known).
    #[test]
    fn replies_are_accepted_exactly_when_allowed(kind in field(), reason in field(), connection in any::<u64>()) {
        let mut bytes = record(&[CONTROL_MAGIC, CONTROL_VERSION, kind, reason]);
        bytes.extend(connection.to_ne_bytes());
        prop_assert_eq!(bytes.len(), REPLY_SIZE);
        let allowed = (kind == ReplyKind::Swap as u32 && reason == 0)
            || ((kind == ReplyKind::Plain as u32 || kind == ReplyKind::Retry as u32) && matches!(reason, 1..=4 | 6 | 7));
        let decoded = Reply::decode(&bytes);
        prop_assert_eq!(decoded.is_ok(), allowed, "{:?}", decoded);
        if let Ok(reply) = decoded {
            prop_assert_eq!(reply.encode().to_vec(), bytes);
            if reply.reply_kind() != Some(ReplyKind::Swap) {
                prop_assert_eq!(PlainReason::from_u32(reply.reason) as u32, reply.reason);
            }
        }
    }
}
