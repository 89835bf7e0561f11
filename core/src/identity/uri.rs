//! The URI comparison behind [`super::IdentityRule::UriPrefix`] and
//! [`super::IdentityRule::UriExact`]: a small strict parser for the absolute
//! `scheme://host[:port][/path]` URIs that ONE Record IDs are, compared component by
//! component.
//!
//! Hand-written rather than a URI crate: the core runs on microcontrollers (the crates that
//! normalise hosts pull IDNA/Unicode tables), the matching needs rules a general parser does
//! not apply (userinfo, query and fragment refused; `.`/`..` segments refused; no decoding of
//! percent-encoded octets), and certificate URIs are IA5String (ASCII) anyway.
//!
//! What is accepted (anything else is an invalid rule, or a certificate URI that matches no
//! rule):
//! - scheme: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`, compared case-insensitively;
//! - `//` and an authority without userinfo (`user@` is refused: `https://a.example@evil.com/`
//!   names the host `evil.com`);
//! - host: a DNS-style name (letters, digits, `-`, dot-separated non-empty labels, compared
//!   case-insensitively, never by suffix), an IPv4 address, or an IPv6 literal in brackets
//!   (compared as an address: `[::1]` equals `[0:0::1]`); no percent-encoding, no zone IDs;
//! - port: decimal, at most 65535; `https` and `http` default ports (443, 80) equal an
//!   explicit one; an empty port (`host:`) is the default port (RFC 3986 §6.2.3);
//! - path: empty, or `/`-separated segments of RFC 3986 `pchar`s. Empty segments (`//`) and
//!   dot segments (`.`, `..`, also percent-encoded) are refused. Percent-encoded octets are
//!   compared as written (hex digits case-insensitively), never decoded: `%2F` is not a `/`
//!   and cannot create a path boundary, and `%61` does not equal `a` (the certificate must
//!   spell the path as the rule does);
//! - no query, no fragment.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The host of a parsed URI.
#[derive(Debug, PartialEq, Eq)]
enum Host {
    /// An IPv4 address or bracketed IPv6 literal.
    Ip(IpAddr),
    /// A name, lowercased.
    Name(String),
}

/// An absolute URI split into the components the rules compare.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Uri {
    /// Lowercased.
    scheme: String,
    host: Host,
    /// Explicit port, or the scheme's default; `None` when neither exists.
    port: Option<u16>,
    /// As written, with percent-encoding hex digits uppercased; `""` or starts with `/`.
    path: String,
}

impl Uri {
    /// Parse `s`; the error says what is wrong.
    pub(super) fn parse(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() {
            return Err("empty");
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("only printable ASCII without spaces is allowed (use punycode hosts)");
        }
        let (scheme, rest) = s.split_once(':').ok_or("not an absolute URI (no scheme)")?;
        let mut sb = scheme.bytes();
        if !sb.next().is_some_and(|b| b.is_ascii_alphabetic())
            || !sb.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return Err("invalid scheme");
        }
        let rest = rest
            .strip_prefix("//")
            .ok_or("no authority (expected scheme://host)")?;
        if rest.contains('#') {
            return Err("a fragment is not allowed");
        }
        if rest.contains('?') {
            return Err("a query is not allowed");
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err("userinfo (user@) is not allowed");
        }
        let scheme = scheme.to_ascii_lowercase();
        let (host, port) = parse_authority(authority)?;
        let port = port.or(match scheme.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        });
        Ok(Self {
            scheme,
            host,
            port,
            path: parse_path(path)?,
        })
    }

    /// `true` when `self` and `other` name the same resource: same scheme, host and port,
    /// same path (an empty path is `/`; a trailing `/` is otherwise significant).
    pub(super) fn same_resource(&self, other: &Self) -> bool {
        let root = |p: &str| p.is_empty() || p == "/";
        self.scheme == other.scheme
            && self.host == other.host
            && self.port == other.port
            && (self.path == other.path || (root(&self.path) && root(&other.path)))
    }

    /// `true` when `self` (a rule) covers `other` (a certificate's URI): same scheme, host
    /// and port, and `self`'s path a prefix of `other`'s at a `/` boundary. An empty path or
    /// `/` covers the whole host; `/a` and `/a/` cover `/a`, `/a/` and `/a/b`, never `/ab`.
    pub(super) fn covers(&self, other: &Self) -> bool {
        if self.scheme != other.scheme || self.host != other.host || self.port != other.port {
            return false;
        }
        let base = self.path.strip_suffix('/').unwrap_or(&self.path);
        match other.path.strip_prefix(base) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

fn parse_authority(a: &str) -> Result<(Host, Option<u16>), &'static str> {
    let (host, port) = if let Some(v6) = a.strip_prefix('[') {
        let (inside, after) = v6.split_once(']').ok_or("unclosed [ in host")?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| "invalid IPv6 literal (zone IDs and IPvFuture are not supported)")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after the IPv6 literal")?),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (name, port) = match a.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (a, None),
        };
        (parse_name(name)?, port)
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => {
            if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err("invalid port");
            }
            Some(p.parse::<u16>().map_err(|_| "port out of range")?)
        }
    };
    Ok((host, port))
}

fn parse_name(name: &str) -> Result<Host, &'static str> {
    if name.is_empty() {
        return Err("empty host");
    }
    if let Ok(ip) = name.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty()
            || label.len() > 63
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(
                "invalid host name (letters, digits, '-' and non-empty dot-separated labels)",
            );
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err("host looks like an incomplete IPv4 address");
    }
    Ok(Host::Name(name.to_ascii_lowercase()))
}

/// Check the path and uppercase the hex digits of its percent-encodings.
fn parse_path(path: &str) -> Result<String, &'static str> {
    if path.is_empty() || path == "/" {
        return Ok(String::from(path));
    }
    let mut out = String::with_capacity(path.len());
    let body = path.strip_suffix('/').unwrap_or(path);
    // `body` starts with '/': the first split item is the empty string before it.
    for segment in body.split('/').skip(1) {
        let segment = normalise_segment(segment)?;
        if segment.is_empty() {
            return Err("empty path segment (//)");
        }
        if matches!(
            segment.as_str(),
            "." | ".." | "%2E" | "%2E%2E" | ".%2E" | "%2E."
        ) {
            return Err("dot segments (. or ..) are not allowed in the path");
        }
        out.push('/');
        out.push_str(&segment);
    }
    if body.len() < path.len() {
        out.push('/');
    }
    Ok(out)
}

fn normalise_segment(segment: &str) -> Result<String, &'static str> {
    let b = segment.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or("truncated percent-encoding")?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err("invalid percent-encoding");
            }
            out.push(b'%');
            out.extend(hex.iter().map(u8::to_ascii_uppercase));
            i += 3;
            continue;
        }
        let pchar = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            );
        if !pchar {
            return Err("character not allowed in a path");
        }
        out.push(c);
        i += 1;
    }
    // Only ASCII bytes were pushed.
    String::from_utf8(out).map_err(|_| "invalid path")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_that_are_not_strict_absolute_uris_are_refused_with_a_reason() {
        for (rule, why) in [
            ("", "empty"),
            ("onerecord.example", "no scheme"),
            ("onerecord.example/x", "no scheme"),
            ("/logistics-agents/", "no scheme"),
            ("https:onerecord.example", "no authority"),
            ("urn:one-record:acme", "no authority"),
            ("1https://h.example", "invalid scheme"),
            ("https://", "empty host"),
            ("https:///a", "empty host"),
            ("https://:443/a", "empty host"),
            ("https://user@onerecord.example/", "userinfo"),
            ("https://onerecord.example@evil.com/", "userinfo"),
            ("https://h.example/a?x=1", "query"),
            ("https://h.example/a?", "query"),
            ("https://h.example/a#frag", "fragment"),
            ("https://h.example/a/../b", "dot segments"),
            ("https://h.example/./a", "dot segments"),
            ("https://h.example/%2E%2e/a", "dot segments"),
            ("https://h.example//a", "empty path segment"),
            ("https://h.example/a b", "printable ASCII"),
            ("https://h.example/a\tb", "printable ASCII"),
            ("https://h.ex\u{e4}mple/", "printable ASCII"),
            ("https://h.example/a%", "truncated percent-encoding"),
            ("https://h.example/a%g1", "invalid percent-encoding"),
            ("https://h.example/a<b>", "not allowed in a path"),
            ("https://h.example:65536/", "port out of range"),
            ("https://h.example:-1/", "invalid port"),
            ("https://h.example:123456/", "invalid port"),
            ("https://h.example:80:80/", "invalid port"),
            ("https://[::1/", "unclosed"),
            ("https://[::1]x/", "junk after the IPv6 literal"),
            ("https://[fe80::1%25eth0]/", "invalid IPv6 literal"),
            ("https://[v1.x]/", "invalid IPv6 literal"),
            ("https://[1.2.3.4]/", "invalid IPv6 literal"),
            ("https://h..example/", "invalid host name"),
            ("https://h.example./", "invalid host name"),
            ("https://h_1.example/", "invalid host name"),
            ("https://h%2Eexample/", "invalid host name"),
            ("https://127.1/", "incomplete IPv4"),
            ("https://256.0.0.1/", "incomplete IPv4"),
        ] {
            let err = Uri::parse(rule).expect_err(rule);
            assert!(err.contains(why), "{rule:?}: {err:?} should say {why:?}");
        }
    }

    proptest::proptest! {
        /// Peer input never panics, and a valid URI covers and equals itself.
        #[test]
        fn any_string_parses_or_is_refused_without_panic_and_a_valid_uri_matches_itself(
            s in "(https?|HTTPS|spiffe)://([a-zA-Z0-9.:@%\\[\\]-]{0,24})(/[a-zA-Z0-9%./?#@:~-]{0,12}){0,4}|\\PC{0,40}",
            other in "\\PC{0,40}",
        ) {
            if let Ok(u) = Uri::parse(&s) {
                proptest::prop_assert!(u.covers(&u) && u.same_resource(&u), "{s:?}");
                let again = Uri::parse(&s).unwrap();
                proptest::prop_assert_eq!(u, again);
            }
            if let (Ok(a), Ok(b)) = (Uri::parse(&s), Uri::parse(&other)) {
                let _ = (a.covers(&b), b.covers(&a), a.same_resource(&b));
            }
        }
    }
}
