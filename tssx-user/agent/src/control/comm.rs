//! [`Comm`]: a process's command name as the kernel keeps it, stored inline.
//!
//! Every watched connect and accept becomes a kept event that names its process; at tens of
//! thousands of short connections a second, a `String` per event (an allocation, a free, and a
//! copy whenever an event is cloned) was a third of the agent's time per event. The kernel's
//! name is at most 16 bytes (`TASK_COMM_LEN`), so it fits in the event itself.

use std::fmt;

use serde::{Serialize, Serializer};

/// The kernel's `TASK_COMM_LEN`: the name's bytes, its NUL included when shorter.
const COMM_LEN: usize = 16;

/// A command name of at most 16 bytes, as `bpf_get_current_comm` or `/proc/PID/comm` give it
/// (longer input is cut). Shown and serialised as text, with invalid UTF-8 replaced.
///
/// ```
/// # use tssx_agent::control::Comm;
/// let comm = Comm::from("nginx");
/// assert_eq!(comm.to_string(), "nginx");
/// assert_eq!(Comm::from_bytes(b"a-name-longer-than-sixteen").to_string(), "a-name-longer-th");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm {
    bytes: [u8; COMM_LEN],
    len: u8,
}

impl Comm {
    /// The name of `bytes`, cut at 16 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let len = bytes.len().min(COMM_LEN);
        let mut comm = Self { bytes: [0; COMM_LEN], len: len as u8 };
        comm.bytes[..len].copy_from_slice(&bytes[..len]);
        comm
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl From<&str> for Comm {
    fn from(name: &str) -> Self {
        Self::from_bytes(name.as_bytes())
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.as_bytes()), f)
    }
}

impl Serialize for Comm {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_their_bytes_up_to_sixteen() {
        assert_eq!(Comm::from("").as_bytes(), b"");
        assert_eq!(Comm::from_bytes(b"sixteen-bytes-xx").as_bytes(), b"sixteen-bytes-xx");
        assert_eq!(Comm::from_bytes(b"seventeen-bytes-x").as_bytes(), b"seventeen-bytes-");
        assert_eq!(Comm::from_bytes(b"bad\xffname").to_string(), "bad\u{fffd}name");
        assert_eq!(format!("{:?}", Comm::from("redis")), "\"redis\"");
        assert_eq!(serde_json::to_string(&Comm::from("a\"b")).unwrap(), r#""a\"b""#);
    }
}
