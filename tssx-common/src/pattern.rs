//! Watched-address patterns: what `tssx-agent --paths` accepts, and the one matcher that the
//! agent and the hook both use (so that they can never disagree on what is watched).
//!
//! A pattern is one of:
//! * an exact path, `/run/redis.sock`, or an exact abstract name, `@name`;
//! * a **directory prefix**, a path ending in `/`: `/run/php/` watches every socket under that
//!   directory at any depth (`/run/php/a.sock`, `/run/php/pool/b.sock`, not `/run/php` itself);
//! * a **glob**, with shell-style wildcards: `*` (any run of bytes within one path component),
//!   `?` (one byte other than `/`), `[abc]`, `[a-z]`, `[!abc]` (one byte of, or not of, a set),
//!   and `\` to take the next byte literally: `/run/php/*.sock`,
//!   `/var/run/postgresql/.s.PGSQL.*`. Unlike the shell, `*` and `?` match a leading `.` too.
//!   A glob ending in `/` is a directory prefix whose directories are a glob: `/run/user/*/`
//!   watches every socket under each user's runtime directory.
//! * an **abstract glob**, `@name*`: abstract names have no directories, so there `*` and `?`
//!   match `/` too; `@name*` watches every abstract name starting with `name`.
//!
//! Names are compared as written (bytes, after the resolution of a relative address against
//! the caller's working directory): a pattern must be absolute and normal (no `.` or `..`
//! components, no doubled `/`), so that a pattern never looks like it covers what it does not.
//!
//! The crate is `no_std` without `alloc`: everything here borrows the pattern's text.

/// The most bytes of a name: `sun_path` (108 bytes) less its terminating NUL (paths) or its
/// leading NUL (abstract names).
pub const MAX_NAME_LEN: usize = crate::SUN_PATH_LEN - 1;

/// What a pattern covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// One name, exactly.
    Exact,
    /// Every name under a directory (the pattern ends in `/`, no wildcards).
    Directory,
    /// Names the glob matches as a whole.
    Glob,
    /// Every name under a directory that the glob (ending in `/`) matches.
    GlobDirectory,
}

/// Why a pattern was refused. Each variant's text says what to write instead (see
/// [`PatternError::describe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PatternError {
    /// Nothing between two commas, or an empty argument.
    Empty,
    /// `@` alone.
    EmptyAbstract,
    /// A filesystem pattern that does not start with `/`.
    Relative,
    /// Longer than `sun_path` can hold ([`MAX_NAME_LEN`] bytes).
    TooLong,
    /// A NUL byte in a filesystem pattern.
    Nul,
    /// A `[` without its closing `]`.
    UnclosedBracket,
    /// A `/` inside `[...]` (a set matches one byte within a component).
    SlashInBracket,
    /// A `\` with nothing after it.
    TrailingBackslash,
    /// `**` in a filesystem pattern (no recursive globbing: a directory prefix covers every
    /// depth).
    DoubleStar,
    /// A `.` or `..` component, or `//`: names are compared as written.
    NotNormal,
}

impl PatternError {
    /// What was wrong, and what to write instead (one sentence, no pattern in it).
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Empty => "is empty",
            Self::EmptyAbstract => "has no name after the @ (write @name for an abstract socket)",
            Self::Relative => {
                "is relative: give an absolute path (starting with /), a directory ending in /, a glob, or @name for an \
                 abstract socket (relative addresses that programs connect to are resolved against their working \
                 directory and matched against these)"
            }
            Self::TooLong => "is longer than a Unix socket address can be (107 bytes)",
            Self::Nul => "contains a NUL byte",
            Self::UnclosedBracket => "has a [ without its closing ] (write \\[ for a literal [)",
            Self::SlashInBracket => "has a / inside [...] (a set matches one byte within a path component)",
            Self::TrailingBackslash => "ends in a \\ that escapes nothing",
            Self::DoubleStar => "uses **, which is not supported: a directory prefix ending in / (e.g. /run/app/) covers every depth",
            Self::NotNormal => {
                "has a . or .. component or a doubled /: names are compared as written, so write the path in its \
                 normal form"
            }
        }
    }
}

/// A checked pattern, borrowing its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pattern<'a> {
    /// The pattern as written (trimmed), `@` included for an abstract one.
    pub text: &'a str,
    /// An abstract-name pattern (`@...`).
    pub is_abstract: bool,
    /// The pattern without the `@` of an abstract one.
    pub body: &'a [u8],
    /// What it covers.
    pub shape: Shape,
}

/// What the eBPF program can decide for a pattern by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKey<'a> {
    /// The whole `sun_path` (abstract: after its leading NUL) equals these bytes: a hash lookup.
    Exact(&'a [u8]),
    /// Every name starting with these bytes (abstract: after the leading NUL) is covered: an
    /// LPM-trie entry that decides alone.
    Prefix(&'a [u8]),
    /// Only names starting with these bytes can match, but the rest needs the full matcher: an
    /// LPM-trie entry that makes the program report a candidate for the agent to check.
    Candidate(&'a [u8]),
}

const META: &[u8] = b"*?[\\";

impl<'a> Pattern<'a> {
    /// Checks `text` (see the module doc).
    pub fn parse(text: &'a str) -> Result<Self, PatternError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let (is_abstract, body) = match text.strip_prefix('@') {
            Some("") => return Err(PatternError::EmptyAbstract),
            Some(name) => (true, name.as_bytes()),
            None => (false, text.as_bytes()),
        };
        if !is_abstract {
            if body[0] != b'/' {
                return Err(PatternError::Relative);
            }
            if body.contains(&0) {
                return Err(PatternError::Nul);
            }
        }
        if body.len() > MAX_NAME_LEN {
            return Err(PatternError::TooLong);
        }
        check_syntax(body, !is_abstract)?;
        if !is_abstract {
            if body.windows(2).any(|w| w == b"**") {
                return Err(PatternError::DoubleStar);
            }
            let inner = &body[1..body.len() - usize::from(body.len() > 1 && body.ends_with(b"/"))];
            if body.len() > 1 && inner.split(|&b| b == b'/').any(|c| c.is_empty() || c == b"." || c == b"..") {
                return Err(PatternError::NotNormal);
            }
        }
        let glob = body.iter().any(|b| META.contains(b));
        let dir = !is_abstract && body.ends_with(b"/");
        let shape = match (glob, dir) {
            (false, false) => Shape::Exact,
            (false, true) => Shape::Directory,
            (true, false) => Shape::Glob,
            (true, true) => Shape::GlobDirectory,
        };
        Ok(Self { text, is_abstract, body, shape })
    }

    /// The bytes every covered name starts with (before the first wildcard or `\`).
    pub fn literal_prefix(&self) -> &'a [u8] {
        let end = self.body.iter().position(|b| META.contains(b)).unwrap_or(self.body.len());
        &self.body[..end]
    }

    /// How specific the pattern is, to choose among several that match one name: an exact one
    /// first, then the longest literal prefix (ties: the first given).
    pub fn specificity(&self) -> usize {
        match self.shape {
            Shape::Exact => usize::MAX,
            _ => self.literal_prefix().len(),
        }
    }

    /// What the kernel program can decide by itself (see [`KernelKey`]).
    pub fn kernel_key(&self) -> KernelKey<'a> {
        match self.shape {
            Shape::Exact => KernelKey::Exact(self.body),
            Shape::Directory => KernelKey::Prefix(self.body),
            // `@name*`: any abstract name starting with `name`.
            Shape::Glob if self.is_abstract && self.body.ends_with(b"*") && self.literal_prefix().len() == self.body.len() - 1 => {
                KernelKey::Prefix(self.literal_prefix())
            }
            _ => KernelKey::Candidate(self.literal_prefix()),
        }
    }

    /// Whether the pattern covers the address named `name`: a filesystem path (absolute) as its
    /// bytes, or an abstract name with its leading NUL.
    pub fn matches(&self, name: &[u8]) -> bool {
        matches_parts(self.body, self.is_abstract, self.shape, name)
    }
}

/// [`Pattern::matches`] on a pattern's parts (for a caller that keeps them, compiled once, in
/// its own storage: the hook).
pub fn matches_parts(body: &[u8], is_abstract: bool, shape: Shape, name: &[u8]) -> bool {
    let name = match (is_abstract, name.split_first()) {
        (true, Some((0, rest))) => rest,
        (false, Some((b'/', _))) => name,
        _ => return false,
    };
    let paths = !is_abstract;
    match shape {
        Shape::Exact => name == body,
        Shape::Directory => name.len() > body.len() && name.starts_with(body),
        Shape::Glob => glob(body, name, paths),
        Shape::GlobDirectory => name.iter().enumerate().any(|(i, &b)| b == b'/' && i + 1 < name.len() && glob(body, &name[..=i], paths)),
    }
}

/// Checks brackets and escapes of a glob body.
fn check_syntax(body: &[u8], paths: bool) -> Result<(), PatternError> {
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\\' if i + 1 == body.len() => return Err(PatternError::TrailingBackslash),
            b'\\' => i += 2,
            b'[' => {
                let Some((_, next)) = class(body, i, 0) else { return Err(PatternError::UnclosedBracket) };
                if paths && body[i..next].contains(&b'/') {
                    return Err(PatternError::SlashInBracket);
                }
                i = next;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// The set at `p[at] == b'['`: whether `c` is in it, and the index after its `]`; `None` if it
/// is not closed. `[!...]` and `[^...]` negate; a `]` first in the set is literal; `a-z` is a
/// range; `\x` is `x`.
fn class(p: &[u8], at: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = at + 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    loop {
        let mut lo = *p.get(i)?;
        if lo == b']' && !first {
            return Some((found != negate, i + 1));
        }
        first = false;
        if lo == b'\\' {
            i += 1;
            lo = *p.get(i)?;
        }
        i += 1;
        let mut hi = lo;
        if p.get(i) == Some(&b'-') && p.get(i + 1).is_some_and(|&b| b != b']') {
            hi = p[i + 1];
            i += 2;
            if hi == b'\\' {
                hi = *p.get(i)?;
                i += 1;
            }
        }
        if lo <= c && c <= hi {
            found = true;
        }
    }
}

/// Whether glob `p` matches all of `s`. With `paths`, no wildcard matches a `/` (so each `/`
/// of `s` meets a `/` of `p`); the one-star backtracking is then still exact, since a star
/// never has to reach into another component. O(len(p) * len(s)) at worst, both at most 107.
pub fn glob(p: &[u8], s: &[u8], paths: bool) -> bool {
    let (mut pi, mut si) = (0, 0);
    // The last `*` met: the pattern index after it, and where its match in `s` ends now.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            let here = s.get(si).copied();
            let wild_ok = here.is_some_and(|c| !(paths && c == b'/'));
            match p[pi] {
                b'*' => {
                    pi += 1;
                    star = Some((pi, si));
                    continue;
                }
                b'?' if wild_ok => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'?' => {}
                b'[' => match class(p, pi, here.unwrap_or(0)) {
                    Some((true, next)) if wild_ok => {
                        pi = next;
                        si += 1;
                        continue;
                    }
                    Some(_) => {}
                    None if here == Some(b'[') => {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                    None => {}
                },
                b'\\' if pi + 1 < p.len() && here == Some(p[pi + 1]) => {
                    pi += 2;
                    si += 1;
                    continue;
                }
                b'\\' => {}
                c if here == Some(c) => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        } else if si == s.len() {
            return true;
        }
        // A mismatch: let the last star take one more byte, if it may.
        match star {
            Some((after, end)) if end < s.len() && !(paths && s[end] == b'/') => {
                star = Some((after, end + 1));
                pi = after;
                si = end + 1;
            }
            _ => return false,
        }
    }
}

/// Resolves the relative filesystem address `rel` against the working directory `cwd` (an
/// absolute, normal path such as `getcwd` gives) into `out`, lexically: `.` components go,
/// `..` takes the last component off. Returns the length written, or `None` if the result
/// does not fit a Unix socket address ([`MAX_NAME_LEN`] bytes) or `cwd` is not absolute.
///
/// Lexical `..` equals the kernel's walk unless a component of `rel` before it is a symbolic
/// link; the agent checks a resolution against the socket file's inode before it relies on it.
pub fn resolve_relative(cwd: &[u8], rel: &[u8], out: &mut [u8; crate::SUN_PATH_LEN]) -> Option<usize> {
    if cwd.first() != Some(&b'/') {
        return None;
    }
    let mut len = 0usize;
    let push = |out: &mut [u8; crate::SUN_PATH_LEN], len: &mut usize, component: &[u8]| -> Option<()> {
        match component {
            b"" | b"." => {}
            b".." => {
                while *len > 0 && out[*len - 1] != b'/' {
                    *len -= 1;
                }
                *len = len.saturating_sub(1);
            }
            _ => {
                if *len + 1 + component.len() > MAX_NAME_LEN {
                    return None;
                }
                out[*len] = b'/';
                out[*len + 1..*len + 1 + component.len()].copy_from_slice(component);
                *len += 1 + component.len();
            }
        }
        Some(())
    };
    for component in cwd.split(|&b| b == b'/').chain(rel.split(|&b| b == b'/')) {
        push(out, &mut len, component)?;
    }
    if len == 0 {
        out[0] = b'/';
        len = 1;
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    fn p(text: &str) -> Pattern<'_> {
        Pattern::parse(text).unwrap_or_else(|e| panic!("{text}: {}", e.describe()))
    }

    fn abs(name: &str) -> [u8; 128] {
        let mut v = [0u8; 128];
        v[1..=name.len()].copy_from_slice(name.as_bytes());
        v
    }

    #[test]
    fn shapes_and_kernel_keys() {
        assert_eq!(p("/run/a.sock").shape, Shape::Exact);
        assert_eq!(p("/run/a.sock").kernel_key(), KernelKey::Exact(b"/run/a.sock"));
        assert_eq!(p("/run/php/").shape, Shape::Directory);
        assert_eq!(p("/run/php/").kernel_key(), KernelKey::Prefix(b"/run/php/"));
        assert_eq!(p("/run/php/*.sock").shape, Shape::Glob);
        assert_eq!(p("/run/php/*.sock").kernel_key(), KernelKey::Candidate(b"/run/php/"));
        assert_eq!(p("/run/user/*/").shape, Shape::GlobDirectory);
        assert_eq!(p("/run/user/*/").kernel_key(), KernelKey::Candidate(b"/run/user/"));
        assert_eq!(p("@name").kernel_key(), KernelKey::Exact(b"name"));
        assert_eq!(p("@name*").kernel_key(), KernelKey::Prefix(b"name"));
        assert_eq!(p("@na?e*").kernel_key(), KernelKey::Candidate(b"na"));
        assert_eq!(p("@dir/").shape, Shape::Exact, "abstract names have no directories");
        assert_eq!(p("  /x  ").text, "/x");
        assert_eq!(p("/").shape, Shape::Directory);
    }

    #[test]
    fn malformed_patterns_are_refused_with_a_reason() {
        for (text, err) in [
            ("", PatternError::Empty),
            ("   ", PatternError::Empty),
            ("@", PatternError::EmptyAbstract),
            ("run/a.sock", PatternError::Relative),
            ("./a.sock", PatternError::Relative),
            ("*.sock", PatternError::Relative),
            ("/a\0b", PatternError::Nul),
            ("/run/[ab.sock", PatternError::UnclosedBracket),
            ("/run/[!]", PatternError::UnclosedBracket),
            ("@x[", PatternError::UnclosedBracket),
            ("/run/[a/b]", PatternError::SlashInBracket),
            ("/run/a\\", PatternError::TrailingBackslash),
            ("/run/**/a.sock", PatternError::DoubleStar),
            ("/run/**", PatternError::DoubleStar),
            ("/run/../a.sock", PatternError::NotNormal),
            ("/run/./a.sock", PatternError::NotNormal),
            ("/run//a.sock", PatternError::NotNormal),
            ("/run/php//", PatternError::NotNormal),
        ] {
            assert_eq!(Pattern::parse(text), Err(err), "{text:?}");
            assert!(!err.describe().is_empty());
        }
        let long = [b'a'; 108];
        let mut text = [b'/'; 108];
        text[1..].copy_from_slice(&long[1..]);
        assert_eq!(Pattern::parse(core::str::from_utf8(&text).unwrap()), Err(PatternError::TooLong));
        assert!(Pattern::parse(core::str::from_utf8(&text[..107]).unwrap()).is_ok());
        // An abstract name may hold a / and a ** (no directories there).
        assert!(Pattern::parse("@a/**").is_ok());
        assert!(Pattern::parse("@[a/b]").is_ok());
    }

    #[test]
    fn exact_and_directory_patterns() {
        assert!(p("/run/a.sock").matches(b"/run/a.sock"));
        assert!(!p("/run/a.sock").matches(b"/run/a.sock2"));
        let dir = p("/run/php/");
        assert!(dir.matches(b"/run/php/a.sock"));
        assert!(dir.matches(b"/run/php/pool/deep/b.sock"), "any depth");
        assert!(!dir.matches(b"/run/php/"), "the directory itself is no socket under it");
        assert!(!dir.matches(b"/run/php"));
        assert!(!dir.matches(b"/run/phpx/a.sock"));
        assert!(!dir.matches(&abs("/run/php/a.sock")[..17]), "an abstract name is never a path");
    }

    #[test]
    fn globs_stay_within_a_component() {
        let php = p("/run/php/*.sock");
        assert!(php.matches(b"/run/php/www.sock"));
        assert!(php.matches(b"/run/php/.sock"));
        assert!(!php.matches(b"/run/php/pool/www.sock"), "* does not cross /");
        assert!(!php.matches(b"/run/php/www.sock.bak"));
        let pg = p("/var/run/postgresql/.s.PGSQL.*");
        assert!(pg.matches(b"/var/run/postgresql/.s.PGSQL.5432"));
        assert!(!pg.matches(b"/var/run/postgresql/.s.PGSQL.5432.lock/x"));
        assert!(!pg.matches(b"/var/run/postgresql/s.PGSQL.5432"));
        let q = p("/run/a?.sock");
        assert!(q.matches(b"/run/ab.sock"));
        assert!(!q.matches(b"/run/a.sock"));
        assert!(!p("/run?x").matches(b"/run/x"), "? does not match /");
        let set = p("/run/[a-c]x[!0-9].sock");
        assert!(set.matches(b"/run/bxz.sock"));
        assert!(!set.matches(b"/run/dxz.sock"));
        assert!(!set.matches(b"/run/bx5.sock"));
        assert!(p("/run/[]]").matches(b"/run/]"), "] first in a set is literal");
        assert!(p("/run/\\*").matches(b"/run/*"));
        assert!(!p("/run/\\*").matches(b"/run/x"));
        let multi = p("/srv/*/sock/*-*.s");
        assert!(multi.matches(b"/srv/app/sock/a-b.s"));
        assert!(multi.matches(b"/srv/app/sock/a-b-c.s"));
        assert!(!multi.matches(b"/srv/app/x/sock/a-b.s"));
        assert!(p("/a/*b*c").matches(b"/a/xbybzc"));
        assert!(!p("/a/*b*c").matches(b"/a/xbybzcd"));
    }

    #[test]
    fn glob_directories_cover_every_depth_below() {
        let user = p("/run/user/*/");
        assert!(user.matches(b"/run/user/1000/bus"));
        assert!(user.matches(b"/run/user/1000/app/deep.sock"));
        assert!(!user.matches(b"/run/user/1000/"));
        assert!(!user.matches(b"/run/user/x"));
        assert!(!user.matches(b"/run/users/1000/bus"));
    }

    #[test]
    fn abstract_globs_match_any_byte() {
        let a = p("@name*");
        assert!(a.matches(&abs("name")[..5]));
        assert!(a.matches(&abs("name-1/x")[..9]), "* matches / in an abstract name");
        assert!(!a.matches(&abs("nam")[..4]));
        assert!(!a.matches(b"/name"), "a path is never an abstract name");
        assert!(p("@a?c").matches(&abs("a/c")[..4]));
        assert!(p("@x").matches(&abs("x")[..2]));
        assert!(!p("@x").matches(&abs("xy")[..3]));
    }

    #[test]
    fn specificity_prefers_exact_then_longer_prefixes() {
        assert!(p("/run/a.sock").specificity() > p("/run/").specificity());
        assert!(p("/run/php/*.sock").specificity() > p("/run/").specificity());
        assert_eq!(p("/run/php/").specificity(), p("/run/php/*").specificity());
    }

    fn resolved(cwd: &str, rel: &str) -> Option<std::string::String> {
        let mut out = [0u8; crate::SUN_PATH_LEN];
        let n = resolve_relative(cwd.as_bytes(), rel.as_bytes(), &mut out)?;
        Some(std::string::String::from_utf8(out[..n].to_vec()).unwrap())
    }

    #[test]
    fn relative_addresses_resolve_against_the_working_directory() {
        assert_eq!(resolved("/run/app", "a.sock").as_deref(), Some("/run/app/a.sock"));
        assert_eq!(resolved("/run/app", "./a.sock").as_deref(), Some("/run/app/a.sock"));
        assert_eq!(resolved("/run/app", "../b/./c.sock").as_deref(), Some("/run/b/c.sock"));
        assert_eq!(resolved("/", "a.sock").as_deref(), Some("/a.sock"));
        assert_eq!(resolved("/run", "../../x").as_deref(), Some("/x"), ".. stops at the root");
        assert_eq!(resolved("/run/app/", "sub//a.sock").as_deref(), Some("/run/app/sub/a.sock"));
        assert_eq!(resolved("relative", "a"), None);
        let deep = [b'd'; 100];
        let cwd = std::format!("/{}", core::str::from_utf8(&deep).unwrap());
        assert_eq!(resolved(&cwd, "a.sock"), None, "too long for sun_path");
    }

    #[test]
    fn worst_case_globs_terminate() {
        let text = "/*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        let name = [b'a'; 100];
        let mut s = [b'/'; 101];
        s[1..].copy_from_slice(&name);
        assert!(!p(text).matches(&s));
    }
}
