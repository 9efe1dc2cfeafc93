//! The test programs' output lines (`accept pid=12 fd=5`) and socket addresses.

/// The integer value of `key=value` in a test program's output line (`accept pid=12 fd=5`).
pub fn field(line: &str, key: &str) -> Option<i64> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Output lines of a test program starting with the word `word`.
pub fn lines_of<'a>(output: &'a str, word: &str) -> Vec<&'a str> {
    output.lines().filter(|l| l.split_whitespace().next() == Some(word)).collect()
}

/// The socket address a test program uses for `path` (`@name` = abstract name).
pub fn socket_address(path: &str) -> std::os::unix::net::SocketAddr {
    use std::os::{linux::net::SocketAddrExt as _, unix::net::SocketAddr};
    match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name"),
        None => SocketAddr::from_pathname(path).expect("socket path"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_and_lines() {
        assert_eq!(super::field("accept pid=12 fd=5", "fd"), Some(5));
        assert_eq!(super::field("accept pid=12 fd=5", "f"), None);
        assert_eq!(super::lines_of("a 1\nb 2\na 3\n", "a"), ["a 1", "a 3"]);
    }
}
