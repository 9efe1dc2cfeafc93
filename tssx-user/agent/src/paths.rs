//! Watched socket paths: parsing and checking what the user typed, and the eBPF map key.

use std::{fmt, str::FromStr};

use tssx_common::{event::PathKey, SUN_PATH_LEN};

/// Longest name that fits `sun_path` together with its terminating NUL (paths) or its leading
/// NUL (abstract names).
pub const MAX_NAME_LEN: usize = SUN_PATH_LEN - 1;

/// One Unix socket address the agent watches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WatchedPath {
    /// A filesystem path such as `/run/redis.sock` (absolute, at most 107 bytes).
    Filesystem(String),
    /// An abstract name, written `@name` (the `@` stands for the leading NUL byte).
    Abstract(String),
}

/// Why a `--paths` entry was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing between two commas, or an empty argument.
    #[error("empty socket path")]
    Empty,
    /// `@` alone.
    #[error("abstract socket name `@` has no name after the @")]
    EmptyAbstract,
    /// A filesystem path that does not start with `/`.
    #[error("socket path `{0}` is relative: give an absolute path (starting with /) or @name for an abstract socket")]
    Relative(String),
    /// Longer than `sun_path` can hold.
    #[error("socket path `{path}` is {len} bytes long; a Unix socket path holds at most {MAX_NAME_LEN} bytes")]
    TooLong {
        /// The offending path.
        path: String,
        /// Its length in bytes (without the `@` of an abstract name).
        len: usize,
    },
    /// Contains a NUL byte, which `sun_path` cannot carry in a filesystem path.
    #[error("socket path `{}` contains a NUL byte", .0.escape_debug())]
    Nul(String),
}

impl FromStr for WatchedPath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() {
                return Err(PathError::EmptyAbstract);
            }
            if name.len() > MAX_NAME_LEN {
                return Err(PathError::TooLong { path: s.to_owned(), len: name.len() });
            }
            return Ok(Self::Abstract(name.to_owned()));
        }
        if !s.starts_with('/') {
            return Err(PathError::Relative(s.to_owned()));
        }
        if s.contains('\0') {
            return Err(PathError::Nul(s.to_owned()));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(PathError::TooLong { path: s.to_owned(), len: s.len() });
        }
        Ok(Self::Filesystem(s.to_owned()))
    }
}

impl fmt::Display for WatchedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Filesystem(p) => f.write_str(p),
            Self::Abstract(n) => write!(f, "@{n}"),
        }
    }
}

impl WatchedPath {
    /// The `sun_path` bytes a process passes to `bind`/`connect` for this address (without any
    /// terminating NUL).
    pub fn sun_path(&self) -> Vec<u8> {
        match self {
            Self::Filesystem(p) => p.as_bytes().to_vec(),
            Self::Abstract(n) => {
                let mut v = Vec::with_capacity(n.len() + 1);
                v.push(0);
                v.extend_from_slice(n.as_bytes());
                v
            }
        }
    }

    /// The key of the `WATCHED_PATHS` eBPF map: [`Self::sun_path`] zero-padded to 108 bytes.
    ///
    /// An abstract name that itself ends in NUL bytes gets the same key as the name without
    /// them; such names are not supported.
    pub fn map_key(&self) -> PathKey {
        let mut key = [0u8; SUN_PATH_LEN];
        let bytes = self.sun_path();
        key[..bytes.len()].copy_from_slice(&bytes);
        key
    }
}

/// Removes repeated entries, keeping the first occurrence's position.
pub fn dedup(paths: Vec<WatchedPath>) -> Vec<WatchedPath> {
    let mut seen = std::collections::HashSet::new();
    paths.into_iter().filter(|p| seen.insert(p.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_parse() {
        let p: WatchedPath = "/run/a.sock".parse().unwrap();
        assert_eq!(p, WatchedPath::Filesystem("/run/a.sock".into()));
        assert_eq!(p.to_string(), "/run/a.sock");
        let key = p.map_key();
        assert_eq!(&key[..11], b"/run/a.sock");
        assert!(key[11..].iter().all(|&b| b == 0));
    }

    #[test]
    fn abstract_names_start_with_nul() {
        let p: WatchedPath = "@tssx-demo".parse().unwrap();
        assert_eq!(p, WatchedPath::Abstract("tssx-demo".into()));
        assert_eq!(p.to_string(), "@tssx-demo");
        let key = p.map_key();
        assert_eq!(key[0], 0);
        assert_eq!(&key[1..10], b"tssx-demo");
        assert!(key[10..].iter().all(|&b| b == 0));
    }

    #[test]
    fn relative_and_empty_are_refused() {
        assert_eq!("run/a.sock".parse::<WatchedPath>(), Err(PathError::Relative("run/a.sock".into())));
        assert_eq!("".parse::<WatchedPath>(), Err(PathError::Empty));
        assert_eq!("@".parse::<WatchedPath>(), Err(PathError::EmptyAbstract));
        assert!(PathError::Relative("x".into()).to_string().contains("absolute"));
        assert_eq!(
            PathError::TooLong { path: "/x".into(), len: 108 }.to_string(),
            format!("socket path `/x` is 108 bytes long; a Unix socket path holds at most {MAX_NAME_LEN} bytes")
        );
        assert_eq!(PathError::Nul("/a\0b".into()).to_string(), "socket path `/a\\0b` contains a NUL byte");
    }

    #[test]
    fn length_limit_is_107_bytes() {
        let ok = format!("/{}", "a".repeat(106));
        assert_eq!(ok.len(), 107);
        assert!(ok.parse::<WatchedPath>().is_ok());
        let long = format!("/{}", "a".repeat(107));
        assert_eq!(long.parse::<WatchedPath>(), Err(PathError::TooLong { path: long.clone(), len: 108 }));
        assert!(format!("@{}", "b".repeat(107)).parse::<WatchedPath>().is_ok());
        assert!(format!("@{}", "b".repeat(108)).parse::<WatchedPath>().is_err());
        // The longest path still fills the key with its bytes and leaves the last one 0.
        let key = ok.parse::<WatchedPath>().unwrap().map_key();
        assert_eq!(key[106], b'a');
        assert_eq!(key[107], 0);
    }

    #[test]
    fn dedup_keeps_first() {
        let a: WatchedPath = "/a".parse().unwrap();
        let b: WatchedPath = "@b".parse().unwrap();
        assert_eq!(dedup(vec![a.clone(), b.clone(), a.clone()]), vec![a, b]);
    }
}
