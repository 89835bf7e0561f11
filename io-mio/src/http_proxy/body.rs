//! Message body framing (RFC 9112 section 6 and 7.1): where a body ends, found without
//! holding it. A [`Body`] is fed the bytes that follow a head in any split and says, step by
//! step, how many of them belong to the body and which of those are payload (as opposed to
//! chunked framing), so the proxy can relay a body as it arrives: verbatim (chunked stays
//! chunked) or, for an HTTP/1.0 client, only the payload.
//!
//! The chunk parser is strict: sizes are hex digits only (at most 16), extensions are bounded
//! and lines end in CRLF (a bare LF is an error, not a line end), the trailer section is
//! bounded. An error means the stream is desynchronised: the connection must be closed.

use core::fmt;

/// Longest chunk-size line after the size digits (extensions), in bytes.
const MAX_CHUNK_EXT: usize = 4096;
/// Longest trailer section, in bytes.
const MAX_TRAILERS: usize = 16 * 1024;
/// Most hex digits in a chunk size (a `u64`).
const MAX_SIZE_DIGITS: u8 = 16;

/// How a message body is delimited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    /// `length` more payload bytes (`Content-Length`); `Length(0)` is a body already done.
    Length(u64),
    /// Chunked transfer coding, in the given parsing state.
    Chunked(Chunked),
    /// Delimited by the end of the connection (a response without length).
    UntilClose,
}

/// One step of [`Body::advance`]: the first `len` bytes of the input belong to the body;
/// `payload` says whether they are content (`true`) or chunked framing (`false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) len: usize,
    pub(crate) payload: bool,
}

/// A chunked body that cannot be parsed: the stream is desynchronised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// A chunk size that is not 1 to 16 hex digits.
    ChunkSize,
    /// A chunk extension that is too long or holds a control character.
    ChunkExtension,
    /// A line that does not end in CRLF where one must.
    LineEnd,
    /// A trailer section over the limit.
    TrailersTooLong,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ChunkSize => "invalid chunk size",
            Self::ChunkExtension => "invalid chunk extension",
            Self::LineEnd => "chunk line not ended by CRLF",
            Self::TrailersTooLong => "trailer section too long",
        })
    }
}

/// Where a chunked parser is (RFC 9112 section 7.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Reading the size digits: `size` so far, `digits` read.
    Size { size: u64, digits: u8 },
    /// After the size: extensions (or whitespace before them), `len` bytes so far.
    Ext { size: u64, len: usize },
    /// Read the CR ending the size line; expecting LF.
    SizeLf { size: u64 },
    /// In chunk data, `left` bytes to go.
    Data { left: u64 },
    /// After chunk data: expecting CR.
    DataCr,
    /// After chunk data and CR: expecting LF.
    DataLf,
    /// At the start of a trailer line (or of the final empty line); `total` trailer bytes so far.
    TrailerStart { total: usize },
    /// Inside a trailer line.
    Trailer { total: usize },
    /// Read the CR ending a trailer line; expecting LF.
    TrailerLf { total: usize },
    /// Read the CR of the final empty line; expecting LF.
    EndLf,
    /// The body is complete.
    Done,
}

impl Body {
    /// A chunked body at its start.
    pub(crate) fn chunked() -> Self {
        Self::Chunked(Chunked::Size { size: 0, digits: 0 })
    }

    /// `true` when the body is complete (never for [`Body::UntilClose`]).
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Self::Length(0) | Self::Chunked(Chunked::Done))
    }

    /// Consume the start of `input`: how many bytes belong to the body, and whether they are
    /// payload. Call again with the rest while the body is not done and input remains; a step
    /// of length 0 comes only from a body that is done or from empty input.
    pub(crate) fn advance(&mut self, input: &[u8]) -> Result<Step, BodyError> {
        match self {
            Self::Length(left) => {
                let len = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                *left -= len as u64;
                Ok(Step { len, payload: true })
            }
            Self::UntilClose => Ok(Step {
                len: input.len(),
                payload: true,
            }),
            Self::Chunked(state) => state.advance(input),
        }
    }
}

impl Chunked {
    fn advance(&mut self, input: &[u8]) -> Result<Step, BodyError> {
        if let Self::Data { left } = self {
            let len = usize::try_from(*left)
                .unwrap_or(usize::MAX)
                .min(input.len());
            *left -= len as u64;
            if *left == 0 {
                *self = Self::DataCr;
            }
            return Ok(Step { len, payload: true });
        }
        let mut used = 0;
        for &b in input {
            if matches!(self, Self::Data { .. } | Self::Done) {
                break;
            }
            used += 1;
            *self = self.next(b)?;
        }
        Ok(Step {
            len: used,
            payload: false,
        })
    }

    /// The state after one framing byte.
    fn next(&self, b: u8) -> Result<Self, BodyError> {
        Ok(match *self {
            Self::Size { size, digits } => match hex(b) {
                Some(v) if digits < MAX_SIZE_DIGITS => Self::Size {
                    size: (size << 4) | u64::from(v),
                    digits: digits + 1,
                },
                Some(_) => return Err(BodyError::ChunkSize),
                None if digits == 0 => return Err(BodyError::ChunkSize),
                None if b == b'\r' => Self::SizeLf { size },
                None if b == b';' || b == b' ' || b == b'\t' => Self::Ext { size, len: 1 },
                None => return Err(BodyError::ChunkSize),
            },
            Self::Ext { size, len } => match b {
                b'\r' => Self::SizeLf { size },
                _ if len >= MAX_CHUNK_EXT => return Err(BodyError::ChunkExtension),
                b'\t' | b' '..=b'~' | 0x80.. => Self::Ext { size, len: len + 1 },
                _ => return Err(BodyError::ChunkExtension),
            },
            Self::SizeLf { size } => match b {
                b'\n' if size == 0 => Self::TrailerStart { total: 0 },
                b'\n' => Self::Data { left: size },
                _ => return Err(BodyError::LineEnd),
            },
            Self::DataCr => match b {
                b'\r' => Self::DataLf,
                _ => return Err(BodyError::LineEnd),
            },
            Self::DataLf => match b {
                b'\n' => Self::Size { size: 0, digits: 0 },
                _ => return Err(BodyError::LineEnd),
            },
            Self::TrailerStart { total } => match b {
                b'\r' => Self::EndLf,
                b'\n' => return Err(BodyError::LineEnd),
                _ => Self::Trailer { total: total + 1 },
            },
            Self::Trailer { total } => match b {
                _ if total >= MAX_TRAILERS => return Err(BodyError::TrailersTooLong),
                b'\r' => Self::TrailerLf { total: total + 1 },
                b'\n' => return Err(BodyError::LineEnd),
                _ => Self::Trailer { total: total + 1 },
            },
            Self::TrailerLf { total } => match b {
                b'\n' => Self::TrailerStart { total: total + 1 },
                _ => return Err(BodyError::LineEnd),
            },
            Self::EndLf => match b {
                b'\n' => Self::Done,
                _ => return Err(BodyError::LineEnd),
            },
            // Not reached: `advance` stops before feeding data or a finished body.
            Self::Data { .. } | Self::Done => self.clone(),
        })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feed `input` in pieces split at `cuts`; the bytes consumed, the payload, and the error.
    fn run(mut body: Body, input: &[u8], cuts: &[usize]) -> (usize, Vec<u8>, Option<BodyError>) {
        let mut pieces = Vec::new();
        let mut start = 0;
        let mut sorted: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        sorted.sort_unstable();
        for c in sorted {
            pieces.push(&input[start..c.max(start)]);
            start = c.max(start);
        }
        pieces.push(&input[start..]);
        let (mut used, mut payload) = (0, Vec::new());
        for mut piece in pieces {
            while !piece.is_empty() && !body.is_done() {
                match body.advance(piece) {
                    Ok(step) => {
                        if step.payload {
                            payload.extend_from_slice(&piece[..step.len]);
                        }
                        used += step.len;
                        piece = &piece[step.len..];
                    }
                    Err(e) => return (used, payload, Some(e)),
                }
            }
        }
        assert!(body.is_done() || used == input.len());
        (used, payload, None)
    }

    #[test]
    fn chunked_bodies_end_where_the_grammar_says_and_yield_their_payload() {
        let cases: &[(&[u8], usize, &[u8])] = &[
            (b"0\r\n\r\n", 5, b""),
            (b"5\r\nhello\r\n0\r\n\r\nGET", 15, b"hello"),
            (b"5;ext=1\r\nhello\r\n0\r\n\r\n", 21, b"hello"),
            (b"5 ;a\r\nhello\r\n0\r\n\r\n", 18, b"hello"),
            (b"A\r\n0123456789\r\n000\r\n\r\n", 22, b"0123456789"),
            (b"3\r\nabc\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\nnext", 27, b"abc"),
            (b"0\r\nX: y\r\n\r\n", 11, b""),
        ];
        for (input, end, payload) in cases {
            let (used, got, err) = run(Body::chunked(), input, &[]);
            assert_eq!(err, None, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(used, *end, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(&got, payload);
        }
    }

    #[test]
    fn malformed_chunked_framing_is_an_error() {
        let cases: &[(&[u8], BodyError)] = &[
            (b"\r\n", BodyError::ChunkSize),
            (b"x\r\n", BodyError::ChunkSize),
            (b"-1\r\n", BodyError::ChunkSize),
            (b"+5\r\n", BodyError::ChunkSize),
            (b"0x5\r\n", BodyError::ChunkSize),
            (b"11111111111111111\r\n", BodyError::ChunkSize),
            (b"5\nhello", BodyError::ChunkSize),
            (b"5\r\rhello", BodyError::LineEnd),
            (b"5\r\nhelloX\r\n", BodyError::LineEnd),
            (b"5\r\nhello\n0\r\n\r\n", BodyError::LineEnd),
            (b"0\r\n\n", BodyError::LineEnd),
            (b"0\r\nX: y\n\r\n", BodyError::LineEnd),
            (b"5;a\x00\r\n", BodyError::ChunkExtension),
        ];
        for (input, want) in cases {
            let (_, _, err) = run(Body::chunked(), input, &[]);
            assert_eq!(err, Some(*want), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn long_extensions_and_trailers_are_refused() {
        let mut ext = b"1;".to_vec();
        ext.extend(std::iter::repeat_n(b'a', MAX_CHUNK_EXT + 1));
        assert_eq!(
            run(Body::chunked(), &ext, &[]).2,
            Some(BodyError::ChunkExtension)
        );
        let mut trailers = b"0\r\nX: ".to_vec();
        trailers.extend(std::iter::repeat_n(b'a', MAX_TRAILERS + 1));
        assert_eq!(
            run(Body::chunked(), &trailers, &[]).2,
            Some(BodyError::TrailersTooLong)
        );
    }

    #[test]
    fn content_length_bodies_take_exactly_their_length() {
        assert_eq!(
            run(Body::Length(3), b"abcdef", &[1]),
            (3, b"abc".to_vec(), None)
        );
        assert!(Body::Length(0).is_done());
        let mut b = Body::UntilClose;
        assert_eq!(b.advance(b"xyz").map(|s| s.len), Ok(3));
        assert!(!b.is_done());
    }

    fn encode(chunks: &[Vec<u8>], trailer: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        if trailer {
            out.extend_from_slice(b"X-Sum: 1\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    proptest! {
        /// Any split of a valid chunked body gives the same end and payload.
        #[test]
        fn chunked_parsing_does_not_depend_on_the_split(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
            trailer in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut wire = encode(&chunks, trailer);
            let end = wire.len();
            wire.extend_from_slice(b"POST / HTTP/1.1\r\n");
            let (used, payload, err) = run(Body::chunked(), &wire, &cuts);
            prop_assert_eq!(err, None);
            prop_assert_eq!(used, end);
            prop_assert_eq!(payload, chunks.concat());
        }

        /// Arbitrary bytes never panic and never consume past a finished body.
        #[test]
        fn arbitrary_input_never_panics(
            input in proptest::collection::vec(any::<u8>(), 0..200),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let (used, _, _) = run(Body::chunked(), &input, &cuts);
            prop_assert!(used <= input.len());
        }
    }
}
