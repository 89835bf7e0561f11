//! The smallest HTTP/1.x response reader the load generator needs: status 200, a body framed
//! by `Content-Length` or by the end of the connection, and whether the server keeps the
//! connection open afterwards. Chunked bodies are refused (no peer under test sends them).

/// Largest response accepted (head and body).
pub const MAX_RESPONSE: usize = 1 << 20;

/// Why a response could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// More than [`MAX_RESPONSE`] bytes.
    TooLarge,
    /// Not an HTTP/1.x status line.
    BadStatusLine,
    /// A status other than 200.
    Status(u16),
    /// `Transfer-Encoding: chunked` (not supported here).
    Chunked,
    /// A `Content-Length` that is not a number.
    BadLength,
    /// The connection ended before the body did.
    Truncated,
}

impl HttpError {
    /// Short label used in failure counts.
    pub fn label(self) -> String {
        match self {
            Self::TooLarge => "http: response too large".into(),
            Self::BadStatusLine => "http: bad status line".into(),
            Self::Status(s) => format!("http: status {s}"),
            Self::Chunked => "http: chunked body".into(),
            Self::BadLength => "http: bad content-length".into(),
            Self::Truncated => "http: truncated response".into(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Head {
    len: usize,
    body: Option<usize>,
    keep_alive: bool,
}

/// One response being received.
#[derive(Debug, Default)]
pub struct Response {
    buf: Vec<u8>,
    head: Option<Head>,
}

impl Response {
    /// Forget the previous response, keeping the allocation.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.head = None;
    }

    /// Give the buffer back (idle connections).
    pub fn release(&mut self) {
        self.buf = Vec::new();
        self.head = None;
    }

    /// Append decrypted bytes.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), HttpError> {
        if self.buf.len() + data.len() > MAX_RESPONSE {
            return Err(HttpError::TooLarge);
        }
        self.buf.extend_from_slice(data);
        if self.head.is_none() {
            self.head = parse_head(&self.buf)?;
        }
        Ok(())
    }

    /// `Ok(true)` once the whole response is here. `ended` says the server closed (its body
    /// may be framed by the close).
    pub fn complete(&self, ended: bool) -> Result<bool, HttpError> {
        match self.head {
            Some(Head {
                len, body: Some(n), ..
            }) if self.buf.len() >= len + n => Ok(true),
            Some(Head { body: None, .. }) if ended => Ok(true),
            _ if ended => Err(HttpError::Truncated),
            _ => Ok(false),
        }
    }

    /// `true` when the server keeps the connection open after this response.
    pub fn keep_alive(&self) -> bool {
        self.head.is_some_and(|h| h.keep_alive && h.body.is_some())
    }
}

fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let Some(len) = find_end(buf) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..len]).map_err(|_| HttpError::BadStatusLine)?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(HttpError::BadStatusLine),
    };
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::BadStatusLine)?;
    if status != 200 {
        return Err(HttpError::Status(status));
    }
    let mut body = None;
    let mut keep_alive = http11;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            body = Some(value.parse().map_err(|_| HttpError::BadLength)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            return Err(HttpError::Chunked);
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        }
    }
    Ok(Some(Head {
        len,
        body,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_response_completes_when_body_arrives() {
        let mut r = Response::default();
        r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
            .unwrap();
        assert!(!r.complete(false).unwrap());
        r.feed(b"cd").unwrap();
        assert!(r.complete(false).unwrap());
        assert!(r.keep_alive());
    }

    #[test]
    fn http10_body_ends_with_the_connection() {
        let mut r = Response::default();
        r.feed(b"HTTP/1.0 200 ok\r\nContent-type: text/html\r\n\r\n<html>")
            .unwrap();
        assert!(!r.complete(false).unwrap());
        assert!(r.complete(true).unwrap());
        assert!(!r.keep_alive());
    }

    #[test]
    fn non_200_and_truncation_are_errors() {
        let mut r = Response::default();
        assert_eq!(
            r.feed(b"HTTP/1.1 403 Forbidden\r\n\r\n"),
            Err(HttpError::Status(403))
        );
        let mut r = Response::default();
        r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
            .unwrap();
        assert_eq!(r.complete(true), Err(HttpError::Truncated));
        let mut r = Response::default();
        assert_eq!(r.feed(b"SSH-2.0-x\r\n\r\n"), Err(HttpError::BadStatusLine));
    }

    #[test]
    fn connection_close_is_not_keep_alive() {
        let mut r = Response::default();
        r.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        assert!(r.complete(false).unwrap());
        assert!(!r.keep_alive());
    }
}
