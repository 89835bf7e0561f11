//! Destination patterns (`HOST[:PORT]`, `*.parent[:PORT]`), pure.

use std::fmt;

use crate::http_proxy::{Dest, split_authority};

/// A destination pattern: a host (exact, ASCII case ignored) or `*.parent` (any name that
/// ends in `.parent`, with one label or more before it: `*.example` matches `a.example` and
/// `a.b.example`, not `example`), and a port (any when the pattern names none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern {
    host: Host,
    port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `.parent`, lowercase.
    Suffix(String),
}

impl Pattern {
    /// Parse `HOST[:PORT]`, `*.parent[:PORT]` or `[v6][:PORT]`; `None` when it is not one.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (host, port) = split_authority(text.trim())?;
        let host = host.to_ascii_lowercase();
        let host = match host.strip_prefix('*') {
            Some(suffix) => {
                if suffix.len() < 2 || suffix[1..].contains('*') {
                    return None;
                }
                Host::Suffix(suffix.to_string())
            }
            None => Host::Exact(host),
        };
        Some(Self { host, port })
    }

    /// Whether `dest` matches.
    pub(crate) fn matches(&self, dest: &Dest) -> bool {
        if self.port.is_some_and(|p| p != dest.port) {
            return false;
        }
        match &self.host {
            Host::Exact(h) => *h == dest.host,
            Host::Suffix(s) => dest.host.len() > s.len() && dest.host.ends_with(s.as_str()),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Exact(h) if h.contains(':') => write!(f, "[{h}]")?,
            Host::Exact(h) => f.write_str(h)?,
            Host::Suffix(s) => write!(f, "*{s}")?,
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(host: &str, port: u16) -> Dest {
        Dest {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn a_wildcard_matches_one_or_more_labels_below_its_parent_only() {
        let p = Pattern::parse("*.Example").unwrap();
        assert!(p.matches(&dest("a.example", 443)));
        assert!(p.matches(&dest("a.b.example", 8443)));
        assert!(!p.matches(&dest("example", 443)));
        assert!(!p.matches(&dest("badexample", 443)));
        assert!(!p.matches(&dest("a.example.org", 443)));
    }

    #[test]
    fn a_port_in_the_pattern_must_match_and_none_means_any() {
        let p = Pattern::parse("partner.example:8443").unwrap();
        assert!(p.matches(&dest("partner.example", 8443)));
        assert!(!p.matches(&dest("partner.example", 443)));
        assert!(!p.matches(&dest("other.example", 8443)));
        let any = Pattern::parse("partner.example").unwrap();
        assert!(any.matches(&dest("partner.example", 1)));
        let v6 = Pattern::parse("[::1]:9").unwrap();
        assert!(v6.matches(&dest("::1", 9)));
        assert_eq!(v6.to_string(), "[::1]:9");
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "",
            "*",
            "*.",
            "a.*.example",
            "ex*ample",
            "host:",
            "host:0",
            "host:65536",
            "host:x",
            "user@host",
            "[::1",
            "[nope]:1",
            "a b",
        ] {
            assert_eq!(Pattern::parse(bad), None, "{bad:?}");
        }
    }
}
