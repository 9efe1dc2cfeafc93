//! Watched socket addresses: the patterns the user typed (`--paths`), checked, and how they
//! reach the kernel program (exact names in a hash map, literal prefixes in an LPM trie).
//!
//! The patterns themselves (exact paths, directory prefixes, globs, abstract names and
//! prefixes) and their matcher are [`tssx_common::pattern`], shared with the hook so that both
//! sides agree on what is watched.

use std::{fmt, str::FromStr};

use tssx_common::{
    event::{PathKey, TraceConfig, PATH_ID_CANDIDATE},
    pattern::{KernelKey, Pattern, PatternError},
    SUN_PATH_LEN,
};

pub use tssx_common::pattern::MAX_NAME_LEN;

/// One watched pattern, checked (see [`tssx_common::pattern`]): `/run/redis.sock`,
/// `/run/php/` (a directory, any depth), `/run/php/*.sock` (a glob), `@name`, `@name*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchedPath {
    text: String,
}

/// Why a `--paths` entry was refused: the entry and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathError {
    /// The entry as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: PatternError,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pattern = self.pattern.escape_debug();
        match self.reason {
            PatternError::TooLong => {
                let len = self.pattern.len() - usize::from(self.pattern.starts_with('@'));
                write!(f, "watched pattern `{pattern}` is {len} bytes long; a Unix socket address holds at most {MAX_NAME_LEN} bytes")
            }
            reason => write!(f, "watched pattern `{pattern}` {}", reason.describe()),
        }
    }
}

impl std::error::Error for PathError {}

impl FromStr for WatchedPath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match Pattern::parse(s) {
            Ok(p) => Ok(Self { text: p.text.to_owned() }),
            Err(reason) => Err(PathError { pattern: s.trim().to_owned(), reason }),
        }
    }
}

impl fmt::Display for WatchedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An LPM-trie entry for the kernel: the prefix bytes (`sun_path` bytes, an abstract one with
/// its leading NUL), and the value (a pattern id, or [`PATH_ID_CANDIDATE`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixEntry {
    /// The leading `sun_path` bytes the entry covers.
    pub prefix: Vec<u8>,
    /// What a lookup that lands here answers.
    pub value: u32,
}

impl WatchedPath {
    /// The checked pattern.
    pub fn pattern(&self) -> Pattern<'_> {
        Pattern::parse(&self.text).expect("checked when parsed")
    }

    /// Whether the pattern covers `name` (`sun_path` bytes: a path, or an abstract name with
    /// its leading NUL).
    pub fn matches(&self, name: &[u8]) -> bool {
        self.pattern().matches(name)
    }

    /// Whether it is an abstract-name pattern.
    pub fn is_abstract(&self) -> bool {
        self.pattern().is_abstract
    }

    /// The key of the `WATCHED_PATHS` eBPF hash map if the pattern is one exact name: its
    /// `sun_path` bytes zero-padded to 108 bytes.
    ///
    /// An abstract name that itself ends in NUL bytes gets the same key as the name without
    /// them; such names are not supported.
    pub fn map_key(&self) -> Option<PathKey> {
        match self.pattern().kernel_key() {
            KernelKey::Exact(bytes) => Some(self.key_of(bytes)),
            _ => None,
        }
    }

    /// The `sun_path` form of `bytes` (a leading NUL for an abstract pattern), zero-padded.
    fn key_of(&self, bytes: &[u8]) -> PathKey {
        let mut key = [0u8; SUN_PATH_LEN];
        let at = usize::from(self.is_abstract());
        key[at..at + bytes.len()].copy_from_slice(bytes);
        key
    }

    /// The literal prefix of a non-exact pattern, in `sun_path` form (leading NUL for an
    /// abstract one), and whether that prefix alone decides (a directory, `@name*`).
    fn kernel_prefix(&self) -> Option<(Vec<u8>, bool)> {
        let (bytes, decides) = match self.pattern().kernel_key() {
            KernelKey::Exact(_) => return None,
            KernelKey::Prefix(bytes) => (bytes, true),
            KernelKey::Candidate(bytes) => (bytes, false),
        };
        let mut prefix = Vec::with_capacity(bytes.len() + 1);
        if self.is_abstract() {
            prefix.push(0);
        }
        prefix.extend_from_slice(bytes);
        Some((prefix, decides))
    }
}

/// The `WATCHED_PREFIXES` LPM-trie entries for `paths` (ids are positions): one per distinct
/// literal prefix. A prefix decides alone (its value is the pattern's id) only if every pattern
/// with that prefix decides alone; otherwise the program reports a candidate and the agent
/// matches the address against all patterns.
pub fn prefix_entries(paths: &[WatchedPath]) -> Vec<PrefixEntry> {
    let mut entries: Vec<PrefixEntry> = Vec::new();
    for (id, path) in paths.iter().enumerate() {
        let Some((prefix, decides)) = path.kernel_prefix() else { continue };
        let value = if decides { id as u32 } else { PATH_ID_CANDIDATE };
        match entries.iter_mut().find(|e| e.prefix == prefix) {
            // Two patterns on one prefix: the agent chooses (an exact tie goes to the first).
            Some(entry) if entry.value != value || !decides => entry.value = PATH_ID_CANDIDATE,
            Some(_) => {}
            None => entries.push(PrefixEntry { prefix, value }),
        }
    }
    entries
}

/// For each pattern (ids are positions), whether the kernel program names it on its own for
/// some connect: an exact name (`WATCHED_PATHS`), or a prefix whose `WATCHED_PREFIXES` entry
/// holds its id (a directory, `@name*`). A glob, and a prefix shared with one, reach the agent
/// as candidates only: the program never looks such a pattern up in `QUIET` (see
/// `control::quiet`), so a streak there would only cost map writes.
pub fn kernel_named(paths: &[WatchedPath]) -> Vec<bool> {
    let prefixes = prefix_entries(paths);
    (0..paths.len()).map(|id| paths[id].map_key().is_some() || prefixes.iter().any(|e| e.value == id as u32)).collect()
}

/// The id of the pattern that covers `name` (`sun_path` bytes): an exact one first, then the
/// one with the longest literal prefix, the first given on a tie (what the kernel program's
/// hash-then-longest-prefix lookup answers).
pub fn best_match(paths: &[WatchedPath], name: &[u8]) -> Option<u32> {
    let mut best: Option<(usize, u32)> = None;
    for (id, path) in paths.iter().enumerate() {
        let pattern = path.pattern();
        if pattern.matches(name) && best.is_none_or(|(s, _)| pattern.specificity() > s) {
            best = Some((pattern.specificity(), id as u32));
        }
    }
    best.map(|(_, id)| id)
}

/// Fills the kernel programs' prefilter in `config` from `paths` (see
/// [`TraceConfig::exact_lengths`]): the lengths of the exact filesystem names, whether an exact
/// abstract name and whether any literal prefix is watched. It must describe exactly what
/// [`Watcher`](crate::loader::Watcher) puts into the maps: a length missing here would make
/// the programs miss that name.
pub fn fill_prefilter(config: &mut TraceConfig, paths: &[WatchedPath]) {
    config.exact_lengths = [0; 4];
    config.exact_abstract = 0;
    for key in paths.iter().filter_map(WatchedPath::map_key) {
        if key[0] == 0 {
            config.exact_abstract = 1;
        } else {
            config.note_exact_length(key.iter().position(|&b| b == 0).unwrap_or(key.len()));
        }
    }
    config.prefixes = u32::from(!prefix_entries(paths).is_empty());
}

/// Whether any pattern is a filesystem one (then relative addresses are worth resolving).
pub fn any_filesystem(paths: &[WatchedPath]) -> bool {
    paths.iter().any(|p| !p.is_abstract())
}

/// A `sun_path` (path bytes, or an abstract name with its leading NUL) as the trace and
/// `status` write it: `@name` for an abstract one.
pub fn display_name(name: &[u8]) -> String {
    match name.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(name).into_owned(),
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

    fn w(text: &str) -> WatchedPath {
        text.parse().unwrap()
    }

    #[test]
    fn prefilter_lets_through_exactly_the_names_the_maps_can_hold() {
        let open = || TraceConfig {
            fork_child_pid_off: 0,
            exit_pid_off: 0,
            exit_group_dead_off: 0,
            ready: 1,
            relative: 0,
            io_uring_create_fd_off: 0,
            exact_lengths: TraceConfig::EVERY_LENGTH,
            exact_abstract: 1,
            prefixes: 1,
            sock_addr_uaddr_off: TraceConfig::SOCK_ADDR_UADDR_OFF,
            sock_addr_uaddrlen_off: TraceConfig::SOCK_ADDR_UADDRLEN_OFF,
        };
        let mut config = open();
        fill_prefilter(&mut config, &[w("/run/a.sock"), w("/var/run/nscd/socket")]);
        for len in 0..=SUN_PATH_LEN as u32 {
            assert_eq!(config.may_be_exact(false, len), len == 11 || len == 20, "length {len}");
        }
        assert!(!config.may_be_exact(true, 4), "no abstract name watched");
        assert_eq!(config.prefixes, 0, "no directory or glob watched");

        let mut config = open();
        fill_prefilter(&mut config, &[w("@app"), w("/run/php/"), w("/srv/*.sock")]);
        assert!(config.may_be_exact(true, 4));
        assert!((0..=SUN_PATH_LEN as u32).all(|len| !config.may_be_exact(false, len)), "no exact filesystem name");
        assert_eq!(config.prefixes, 1);

        // The longest name a `sun_path` holds.
        let mut config = open();
        fill_prefilter(&mut config, &[w(&format!("/{}", "x".repeat(SUN_PATH_LEN - 2)))]);
        assert!(config.may_be_exact(false, SUN_PATH_LEN as u32 - 1));
    }

    #[test]
    fn the_kernel_names_exact_names_and_deciding_prefixes_not_globs() {
        let paths = ["/run/a.sock", "/run/php/", "/run/php/*.sock", "/srv/", "/srv/x/*.sock", "@bus*", "/run/user/*/"].map(w);
        // "/run/php/" shares its literal prefix with the glob under it: a candidate. "/srv/"
        // keeps its own entry (the glob's literal prefix is "/srv/x/").
        assert_eq!(kernel_named(&paths), [true, false, false, true, false, true, false]);
    }

    #[test]
    fn absolute_paths_parse() {
        let p = w("/run/a.sock");
        assert_eq!(p.to_string(), "/run/a.sock");
        let key = p.map_key().unwrap();
        assert_eq!(&key[..11], b"/run/a.sock");
        assert!(key[11..].iter().all(|&b| b == 0));
    }

    #[test]
    fn abstract_names_start_with_nul() {
        let p = w("@tssx-demo");
        assert_eq!(p.to_string(), "@tssx-demo");
        let key = p.map_key().unwrap();
        assert_eq!(key[0], 0);
        assert_eq!(&key[1..10], b"tssx-demo");
        assert!(key[10..].iter().all(|&b| b == 0));
    }

    #[test]
    fn malformed_patterns_give_clear_errors() {
        let err = |text: &str| text.parse::<WatchedPath>().unwrap_err().to_string();
        assert!(err("run/a.sock").starts_with("watched pattern `run/a.sock` is relative: give an absolute path"), "{}", err("run/a.sock"));
        assert_eq!(err(""), "watched pattern `` is empty");
        assert!(err("@").contains("has no name after the @"));
        assert!(err("/run/[ab.sock").contains("has a [ without its closing ]"), "{}", err("/run/[ab.sock"));
        assert!(err("/run/**/x")
            .contains("uses **, which is not supported: a directory prefix ending in / (e.g. /run/app/) covers every depth"));
        assert!(err("/run/../x").contains("normal form"));
        assert!(err("/run/[a/b]").contains("inside [...]"));
        assert!(err("/run/x\\").contains("escapes nothing"));
        assert_eq!(err("/a\0b"), "watched pattern `/a\\0b` contains a NUL byte");
        let long = format!("/{}", "a".repeat(107));
        assert_eq!(err(&long), format!("watched pattern `{long}` is 108 bytes long; a Unix socket address holds at most 107 bytes"));
        assert!(format!("/{}", "a".repeat(106)).parse::<WatchedPath>().is_ok());
        assert!(format!("@{}", "b".repeat(107)).parse::<WatchedPath>().is_ok());
        assert!(format!("@{}", "b".repeat(108)).parse::<WatchedPath>().is_err());
    }

    #[test]
    fn length_limit_keys() {
        let ok = format!("/{}", "a".repeat(106));
        let key = ok.parse::<WatchedPath>().unwrap().map_key().unwrap();
        assert_eq!(key[106], b'a');
        assert_eq!(key[107], 0);
    }

    #[test]
    fn kernel_entries_for_each_shape() {
        let paths = vec![w("/run/a.sock"), w("/run/php/"), w("/var/run/postgresql/.s.PGSQL.*"), w("@app*"), w("@x?y")];
        assert!(paths[0].map_key().is_some());
        assert!(paths[1..].iter().all(|p| p.map_key().is_none()));
        let entries = prefix_entries(&paths);
        assert_eq!(
            entries,
            vec![
                PrefixEntry { prefix: b"/run/php/".to_vec(), value: 1 },
                PrefixEntry { prefix: b"/var/run/postgresql/.s.PGSQL.".to_vec(), value: PATH_ID_CANDIDATE },
                PrefixEntry { prefix: b"\0app".to_vec(), value: 3 },
                PrefixEntry { prefix: b"\0x".to_vec(), value: PATH_ID_CANDIDATE },
            ]
        );
        // A directory and a glob on one prefix: the agent decides.
        let shared = prefix_entries(&[w("/run/php/"), w("/run/php/*.sock")]);
        assert_eq!(shared, vec![PrefixEntry { prefix: b"/run/php/".to_vec(), value: PATH_ID_CANDIDATE }]);
    }

    #[test]
    fn the_most_specific_pattern_names_a_match() {
        let paths = vec![w("/run/"), w("/run/php/*.sock"), w("/run/php/www.sock"), w("@app*"), w("/run/php/")];
        assert_eq!(best_match(&paths, b"/run/php/www.sock"), Some(2), "exact first");
        assert_eq!(best_match(&paths, b"/run/php/a.sock"), Some(1), "longer literal prefix, first on a tie");
        assert_eq!(best_match(&paths, b"/run/php/a.txt"), Some(4));
        assert_eq!(best_match(&paths, b"/run/x.sock"), Some(0));
        assert_eq!(best_match(&paths, b"\0app-1"), Some(3));
        assert_eq!(best_match(&paths, b"/srv/x.sock"), None);
        assert_eq!(best_match(&paths, b"\0ap"), None);
        assert!(any_filesystem(&paths));
        assert!(!any_filesystem(&[w("@a")]));
        assert_eq!(display_name(b"\0app"), "@app");
        assert_eq!(display_name(b"/run/a"), "/run/a");
    }

    #[test]
    fn dedup_keeps_first() {
        let a = w("/a");
        let b = w("@b");
        assert_eq!(dedup(vec![a.clone(), b.clone(), a.clone()]), vec![a, b]);
    }
}
