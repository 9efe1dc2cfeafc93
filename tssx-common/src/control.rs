//! The control protocol between a preload hook (or `tssx-agent status`) and the agent, spoken on
//! the agent's control socket (`<state-dir>/agent.sock`, a Unix stream socket).
//!
//! Every message is a fixed-size `#[repr(C)]` record in native byte order (both ends are on one
//! host). The caller sends one [`Request`]; the agent answers with at most one [`Reply`],
//! carrying the segment's memfd as `SCM_RIGHTS` ancillary data when the answer is
//! [`ReplyKind::Swap`]. The agent learns the caller's pid from `SO_PEERCRED`, never from the
//! message, and checks every claim against the kernel (its connect/accept events, `sock_diag`).
//!
//! A claim is answered at once when it is refused ([`ReplyKind::Plain`]) or must be sent again
//! later ([`ReplyKind::Retry`]). Otherwise the agent holds it, unanswered, until the other end of
//! the connection claims too: then both claims get [`ReplyKind::Swap`] with the same segment, at
//! once. The hook never waits for the answer (it looks for it on later calls). Either way the
//! agent closes the connection after its answer, and closes it without one when the claim ends
//! unanswered (the agent stopped or died); the hook ends a claim by closing the connection (it
//! gave up, or its socket closed). So EOF without a reply means "stay plain". Nothing is sent
//! after the reply.
//!
//! Decoding is strict: a record of the wrong size, magic, version, kind or role is refused with
//! a [`DecodeError`], so a malformed or hostile message can never be mistaken for a claim.

/// `"TSSX"` in the first four bytes of every message.
pub const CONTROL_MAGIC: u32 = u32::from_le_bytes(*b"TSSX");
/// Version of this protocol; bumped on any layout or meaning change.
pub const CONTROL_VERSION: u32 = 2;

/// Bit of [`Request::flags`] in a claim: the claiming process forked while the connection was
/// plain, so another process may hold the same end. The agent then checks that the claiming
/// process is the only holder among its parent and children; if not, it answers
/// [`ReplyKind::Retry`].
pub const CLAIM_FORKED: u32 = 1;
/// Every flag a claim may carry.
pub const CLAIM_FLAGS: u32 = CLAIM_FORKED;
/// Name of the control socket inside the state directory.
pub const CONTROL_SOCKET: &str = "agent.sock";

/// Which end of a connection a claim is for.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that called `connect()` (ring A->B is its to-peer ring).
    Client = 0,
    /// The side that got the socket from `accept()`.
    Server = 1,
}

/// What a request asks for.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// "My fd `fd` is the `role` end of a connection on a watched path: give me its segment."
    Claim = 1,
    /// "List the live connections" (answered with JSON lines, then EOF; for `tssx-agent status`).
    Status = 2,
    // 3 was `Decline` (a server turning its connection plain), which no hook sent: it is
    // refused now, and the value stays unused so an old peer is never misread.
    /// "Describe yourself": one JSON object (live segments, limits, eBPF map sizes, control
    /// threads), then EOF; for `tssx-agent status --stats` and leak checks.
    Stats = 4,
}

/// A request to the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// [`CONTROL_MAGIC`].
    pub magic: u32,
    /// [`CONTROL_VERSION`].
    pub version: u32,
    /// A [`RequestKind`].
    pub kind: u32,
    /// A [`Role`] (claims only; 0 otherwise).
    pub role: u32,
    /// The claimed fd in the caller's process (claims only; -1 otherwise).
    pub fd: i32,
    /// Claims: a set of `CLAIM_*` bits; zero otherwise.
    pub flags: u32,
}

/// Size of an encoded [`Request`].
pub const REQUEST_SIZE: usize = core::mem::size_of::<Request>();
const _: () = assert!(REQUEST_SIZE == 24);

/// The agent's answer to a claim.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    /// Use shared memory: the segment's memfd comes with this reply.
    Swap = 1,
    /// Stay on the plain socket; [`Reply::reason`] says why.
    Plain = 2,
    /// Not now ([`Reply::reason`] says why); the hook may claim again later.
    Retry = 3,
}

/// Why a connection stays plain (the [`Reply::reason`] of a [`ReplyKind::Plain`] reply).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlainReason {
    /// Not plain (the reply is a swap).
    None = 0,
    /// The kernel reported no such connect/accept by this process on a watched path.
    NotSeen = 1,
    /// The other end did not claim its side (it has no hook, or did not claim in time).
    PeerHasNoHook = 2,
    /// The agent could not create or map a segment.
    NoSegment = 3,
    /// The request was malformed.
    BadRequest = 4,
    // 5 was `Declined` (the answer to a `Decline` request): unused, and refused when decoded.
    /// The agent already has `--max-connections` live segments (the bound on its memory).
    TooManyConnections = 6,
    /// Another process holds the same end of the connection (a fork's parent or child).
    NotSoleHolder = 7,
    /// The claiming process set up an io_uring: its io_uring reads and writes would bypass the
    /// rings.
    IoUring = 8,
    /// A client's claim came before the server accepted the connection, and the kernel did
    /// not report the connect (a quiet path): claim again later.
    NotAcceptedYet = 9,
}

impl PlainReason {
    /// Decodes a raw reason; unknown values read as `None`.
    pub const fn from_u32(raw: u32) -> Self {
        match raw {
            1 => Self::NotSeen,
            2 => Self::PeerHasNoHook,
            3 => Self::NoSegment,
            4 => Self::BadRequest,
            6 => Self::TooManyConnections,
            7 => Self::NotSoleHolder,
            8 => Self::IoUring,
            9 => Self::NotAcceptedYet,
            _ => Self::None,
        }
    }

    /// Words for trace lines.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::None => "swapped",
            Self::NotSeen => "no matching kernel event for this process and fd",
            Self::PeerHasNoHook => "peer has no hook (it did not claim its end)",
            Self::NoSegment => "could not create the shared-memory segment",
            Self::BadRequest => "malformed request",
            Self::TooManyConnections => "connection limit reached (--max-connections live segments)",
            Self::NotSoleHolder => "another process holds the same end (fork): not swapped while it does",
            Self::IoUring => "the process uses io_uring (its io_uring reads and writes would bypass the rings)",
            Self::NotAcceptedYet => "not accepted yet, and the kernel did not report the connect (a quiet path): claim again later",
        }
    }
}

/// A reply from the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// [`CONTROL_MAGIC`].
    pub magic: u32,
    /// [`CONTROL_VERSION`].
    pub version: u32,
    /// A [`ReplyKind`].
    pub kind: u32,
    /// A [`PlainReason`] ([`PlainReason::None`] for a swap).
    pub reason: u32,
    /// The agent's id for the connection (for traces and `status`); 0 when plain.
    pub connection: u64,
}

/// Size of an encoded [`Reply`].
pub const REPLY_SIZE: usize = core::mem::size_of::<Reply>();
const _: () = assert!(REPLY_SIZE == 24);

/// Why bytes are not a valid message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not exactly the record's size.
    Size(usize),
    /// Wrong magic.
    Magic(u32),
    /// Another protocol version.
    Version(u32),
    /// Unknown kind.
    Kind(u32),
    /// Unknown role, or a field that must be zero is not.
    Field,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Size(n) => write!(f, "message of {n} bytes (expected {REQUEST_SIZE})"),
            Self::Magic(m) => write!(f, "bad magic {m:#x}"),
            Self::Version(v) => write!(f, "protocol version {v} (this agent speaks {CONTROL_VERSION})"),
            Self::Kind(k) => write!(f, "unknown message kind {k}"),
            Self::Field => write!(f, "invalid field value"),
        }
    }
}

fn word(bytes: &[u8], index: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&bytes[index * 4..index * 4 + 4]);
    u32::from_ne_bytes(w)
}

fn check_header(bytes: &[u8], size: usize) -> Result<(), DecodeError> {
    if bytes.len() != size {
        return Err(DecodeError::Size(bytes.len()));
    }
    if word(bytes, 0) != CONTROL_MAGIC {
        return Err(DecodeError::Magic(word(bytes, 0)));
    }
    if word(bytes, 1) != CONTROL_VERSION {
        return Err(DecodeError::Version(word(bytes, 1)));
    }
    Ok(())
}

impl Request {
    /// A claim of `fd` as the `role` end.
    pub const fn claim(role: Role, fd: i32) -> Self {
        Self::claim_with(role, fd, 0)
    }

    /// A claim of `fd` as the `role` end with `CLAIM_*` flags.
    pub const fn claim_with(role: Role, fd: i32, flags: u32) -> Self {
        Self { magic: CONTROL_MAGIC, version: CONTROL_VERSION, kind: RequestKind::Claim as u32, role: role as u32, fd, flags }
    }

    /// A status request.
    pub const fn status() -> Self {
        Self { magic: CONTROL_MAGIC, version: CONTROL_VERSION, kind: RequestKind::Status as u32, role: 0, fd: -1, flags: 0 }
    }

    /// A stats request.
    pub const fn stats() -> Self {
        Self { magic: CONTROL_MAGIC, version: CONTROL_VERSION, kind: RequestKind::Stats as u32, role: 0, fd: -1, flags: 0 }
    }

    /// The wire bytes.
    pub fn encode(&self) -> [u8; REQUEST_SIZE] {
        let mut out = [0u8; REQUEST_SIZE];
        for (i, w) in [self.magic, self.version, self.kind, self.role, self.fd as u32, self.flags].iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        out
    }

    /// Parses and validates wire bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_header(bytes, REQUEST_SIZE)?;
        let request = Self {
            magic: word(bytes, 0),
            version: word(bytes, 1),
            kind: word(bytes, 2),
            role: word(bytes, 3),
            fd: word(bytes, 4) as i32,
            flags: word(bytes, 5),
        };
        let kind = request.request_kind().ok_or(DecodeError::Kind(request.kind))?;
        let fields_ok = match kind {
            RequestKind::Claim => request.request_role().is_some() && request.fd >= 0 && request.flags & !CLAIM_FLAGS == 0,
            RequestKind::Status | RequestKind::Stats => request.role == 0 && request.fd == -1 && request.flags == 0,
        };
        if !fields_ok {
            return Err(DecodeError::Field);
        }
        Ok(request)
    }

    /// The decoded kind.
    pub const fn request_kind(&self) -> Option<RequestKind> {
        match self.kind {
            1 => Some(RequestKind::Claim),
            2 => Some(RequestKind::Status),
            4 => Some(RequestKind::Stats),
            _ => None,
        }
    }

    /// The decoded role.
    pub const fn request_role(&self) -> Option<Role> {
        match self.role {
            0 => Some(Role::Client),
            1 => Some(Role::Server),
            _ => None,
        }
    }
}

impl Reply {
    /// A swap reply for `connection`.
    pub const fn swap(connection: u64) -> Self {
        Self { magic: CONTROL_MAGIC, version: CONTROL_VERSION, kind: ReplyKind::Swap as u32, reason: 0, connection }
    }

    /// A "claim again later" reply.
    pub const fn retry(reason: PlainReason) -> Self {
        Self { magic: CONTROL_MAGIC, version: CONTROL_VERSION, kind: ReplyKind::Retry as u32, reason: reason as u32, connection: 0 }
    }

    /// A plain reply.
    pub const fn plain(reason: PlainReason) -> Self {
        Self { magic: CONTROL_MAGIC, version: CONTROL_VERSION, kind: ReplyKind::Plain as u32, reason: reason as u32, connection: 0 }
    }

    /// The wire bytes.
    pub fn encode(&self) -> [u8; REPLY_SIZE] {
        let mut out = [0u8; REPLY_SIZE];
        for (i, w) in [self.magic, self.version, self.kind, self.reason].iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        out[16..24].copy_from_slice(&self.connection.to_ne_bytes());
        out
    }

    /// Parses and validates wire bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_header(bytes, REPLY_SIZE)?;
        let mut conn = [0u8; 8];
        conn.copy_from_slice(&bytes[16..24]);
        let reply = Self {
            magic: word(bytes, 0),
            version: word(bytes, 1),
            kind: word(bytes, 2),
            reason: word(bytes, 3),
            connection: u64::from_ne_bytes(conn),
        };
        match reply.reply_kind() {
            Some(ReplyKind::Swap) if reply.reason == 0 => Ok(reply),
            Some(ReplyKind::Plain | ReplyKind::Retry)
                if PlainReason::from_u32(reply.reason) as u32 == reply.reason && reply.reason != 0 =>
            {
                Ok(reply)
            }
            Some(_) => Err(DecodeError::Field),
            None => Err(DecodeError::Kind(reply.kind)),
        }
    }

    /// The decoded kind.
    pub const fn reply_kind(&self) -> Option<ReplyKind> {
        match self.kind {
            1 => Some(ReplyKind::Swap),
            2 => Some(ReplyKind::Plain),
            3 => Some(ReplyKind::Retry),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for request in [Request::claim(Role::Client, 3), Request::claim(Role::Server, 1023), Request::status(), Request::stats()] {
            assert_eq!(Request::decode(&request.encode()), Ok(request));
        }
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::swap(7),
            Reply::plain(PlainReason::PeerHasNoHook),
            Reply::plain(PlainReason::NotSeen),
            Reply::plain(PlainReason::TooManyConnections),
            Reply::retry(PlainReason::NotSoleHolder),
        ] {
            assert_eq!(Reply::decode(&reply.encode()), Ok(reply));
        }
    }

    #[test]
    fn malformed_requests_are_refused() {
        let good = Request::claim(Role::Client, 5).encode();
        assert_eq!(Request::decode(&good[..23]), Err(DecodeError::Size(23)));
        assert_eq!(Request::decode(&[]), Err(DecodeError::Size(0)));
        let mut bad = good;
        bad[0] ^= 1;
        assert!(matches!(Request::decode(&bad), Err(DecodeError::Magic(_))));
        let mut bad = good;
        bad[4] = 9;
        assert_eq!(Request::decode(&bad), Err(DecodeError::Version(9)));
        let mut bad = good;
        bad[8] = 77;
        assert_eq!(Request::decode(&bad), Err(DecodeError::Kind(77)));
        // Kind 3 was the retired `Decline`: refused like any unknown kind, whatever its fields.
        let mut bad = Request::claim(Role::Server, 4).encode();
        bad[8] = 3;
        assert_eq!(Request::decode(&bad), Err(DecodeError::Kind(3)));
        let mut bad = good;
        bad[12] = 2; // role
        assert_eq!(Request::decode(&bad), Err(DecodeError::Field));
        let mut bad = good;
        bad[16..20].copy_from_slice(&(-1i32).to_ne_bytes()); // negative fd in a claim
        assert_eq!(Request::decode(&bad), Err(DecodeError::Field));
        let mut bad = good;
        bad[20] = 2; // an unknown flag
        assert_eq!(Request::decode(&bad), Err(DecodeError::Field));
        let mut forked = good;
        forked[20] = CLAIM_FORKED as u8;
        assert_eq!(Request::decode(&forked), Ok(Request::claim_with(Role::Client, 5, CLAIM_FORKED)));
        let mut bad = Request::status().encode();
        bad[20] = 1; // flags outside a claim
        assert_eq!(Request::decode(&bad), Err(DecodeError::Field));
    }

    #[test]
    fn malformed_replies_are_refused() {
        let mut bad = Reply::swap(1).encode();
        bad[12] = 2; // a swap with a reason
        assert_eq!(Reply::decode(&bad), Err(DecodeError::Field));
        let mut bad = Reply::plain(PlainReason::NotSeen).encode();
        bad[12] = 200; // unknown reason
        assert_eq!(Reply::decode(&bad), Err(DecodeError::Field));
        let mut bad = Reply::plain(PlainReason::NotSeen).encode();
        bad[12] = 5; // the retired `Declined`
        assert_eq!(Reply::decode(&bad), Err(DecodeError::Field));
        let mut bad = Reply::plain(PlainReason::NotSeen).encode();
        bad[12] = 10; // the first reason after the last known one
        assert_eq!(Reply::decode(&bad), Err(DecodeError::Field));
    }

    /// Every byte string of every length up to two records decodes or is refused, never panics;
    /// whatever decodes re-encodes to the same bytes (xorshift-driven, deterministic).
    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut buf = [0u8; 2 * REQUEST_SIZE];
        for round in 0..200_000 {
            let len = (next() % (buf.len() as u64 + 1)) as usize;
            for b in buf.iter_mut() {
                *b = next() as u8;
            }
            if round % 2 == 0 && len >= 8 {
                // Often give it a valid header so the deeper checks are reached too.
                buf[..4].copy_from_slice(&CONTROL_MAGIC.to_ne_bytes());
                buf[4..8].copy_from_slice(&CONTROL_VERSION.to_ne_bytes());
                buf[8] %= 5;
                buf[9..12].fill(0);
            }
            if let Ok(request) = Request::decode(&buf[..len]) {
                assert_eq!(&request.encode()[..], &buf[..len]);
            }
            if let Ok(reply) = Reply::decode(&buf[..len]) {
                assert_eq!(&reply.encode()[..], &buf[..len]);
            }
        }
    }
}
