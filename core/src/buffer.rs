//! Byte storage for a session's incoming and outgoing TLS bytes.
//!
//! Two kinds, chosen when the session is created:
//! - [`Growable`]: a `Vec` that starts small, doubles when full and never exceeds its bound
//!   (a peer cannot make it grow without limit). Memory is released with
//!   [`crate::Session::release_buffers`] while a connection is idle.
//! - [`Fixed`]: caller-owned memory (`&mut [u8]`, `[u8; N]`, `Box<[u8]>`) that never grows:
//!   the embedded adapter's mode. A too-small buffer is a [`crate::Reason::BufferLimit`] error
//!   that names the size required.

use alloc::vec::Vec;

/// Largest TLS record on the wire: 2^14 plaintext + 2048 expansion + 5-byte header
/// (RFC 5246 6.2.3; rustls accepts up to this).
pub const MAX_RECORD: usize = 16_384 + 2_048 + 5;

/// Largest handshake message rustls reassembles (the certificate flight), 64 KiB.
pub const MAX_HANDSHAKE_MESSAGE: usize = 0x1_0000;

/// Default bound of a growable incoming buffer: one maximal handshake message spread over
/// full records, plus one more record.
pub const DEFAULT_MAX_INCOMING: usize = MAX_HANDSHAKE_MESSAGE + 2 * MAX_RECORD;

/// Default bound of a growable outgoing buffer (backpressure starts here).
pub const DEFAULT_MAX_OUTGOING: usize = 4 * MAX_RECORD;

/// Storage behind a session buffer.
pub trait Storage {
    /// The bytes currently available.
    fn as_mut_slice(&mut self) -> &mut [u8];
    /// The bytes currently available.
    fn as_slice(&self) -> &[u8];
    /// Try to make at least `min_len` bytes available, keeping the contents. Returns `false`
    /// when the bound forbids it (the storage is unchanged then).
    fn grow(&mut self, min_len: usize) -> bool;
    /// The largest length this storage can ever reach.
    fn limit(&self) -> usize;
    /// Give memory back while empty (growable storage); a no-op for fixed storage.
    fn release(&mut self) {}
}

/// A heap buffer that grows on demand up to a bound.
#[derive(Debug, Clone)]
pub struct Growable {
    buf: Vec<u8>,
    initial: usize,
    max: usize,
}

impl Growable {
    /// An empty buffer that allocates `initial` bytes on first use and grows to `max`.
    pub fn new(initial: usize, max: usize) -> Self {
        Self {
            buf: Vec::new(),
            initial: initial.min(max),
            max,
        }
    }
}

impl Storage for Growable {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    fn grow(&mut self, min_len: usize) -> bool {
        if min_len <= self.buf.len() {
            return true;
        }
        if min_len > self.max {
            return false;
        }
        let target = min_len
            .max(self.buf.len().saturating_mul(2))
            .max(self.initial)
            .min(self.max);
        self.buf.resize(target, 0);
        true
    }

    fn limit(&self) -> usize {
        self.max
    }

    fn release(&mut self) {
        self.buf = Vec::new();
    }
}

/// Caller-owned memory that never grows.
#[derive(Debug)]
pub struct Fixed<B>(pub B);

impl<B: AsMut<[u8]> + AsRef<[u8]>> Storage for Fixed<B> {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.0.as_mut()
    }

    fn as_slice(&self) -> &[u8] {
        self.0.as_ref()
    }

    fn grow(&mut self, min_len: usize) -> bool {
        min_len <= self.0.as_ref().len()
    }

    fn limit(&self) -> usize {
        self.0.as_ref().len()
    }
}

/// A byte queue over a storage: `[start, end)` holds the pending bytes.
#[derive(Debug)]
pub(crate) struct Queue<S> {
    store: S,
    start: usize,
    end: usize,
}

impl<S: Storage> Queue<S> {
    pub(crate) fn new(store: S) -> Self {
        Self {
            store,
            start: 0,
            end: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub(crate) fn limit(&self) -> usize {
        self.store.limit()
    }

    pub(crate) fn data(&self) -> &[u8] {
        &self.store.as_slice()[self.start..self.end]
    }

    pub(crate) fn data_mut(&mut self) -> &mut [u8] {
        let (s, e) = (self.start, self.end);
        &mut self.store.as_mut_slice()[s..e]
    }

    /// Drop `n` bytes from the front.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Move pending bytes to the front of the storage.
    fn compact(&mut self) {
        if self.start > 0 {
            let (s, e) = (self.start, self.end);
            self.store.as_mut_slice().copy_within(s..e, 0);
            self.end -= s;
            self.start = 0;
        }
    }

    /// Free space after the pending bytes, at least `want` bytes if the bound allows (fewer,
    /// possibly none, otherwise).
    pub(crate) fn spare(&mut self, want: usize) -> &mut [u8] {
        let cap = self.store.as_slice().len();
        if cap - self.end < want {
            self.compact();
            let need = self.end.saturating_add(want);
            if !self.store.grow(need) {
                let limit = self.store.limit();
                self.store.grow(limit);
            }
        }
        let e = self.end;
        &mut self.store.as_mut_slice()[e..]
    }

    /// Make `[end, end + n)` available; `false` when the bound forbids it.
    pub(crate) fn reserve_exact(&mut self, n: usize) -> bool {
        self.spare(n).len() >= n
    }

    /// Mark `n` spare bytes as filled.
    pub(crate) fn commit(&mut self, n: usize) {
        let cap = self.store.as_slice().len();
        self.end = (self.end + n).min(cap);
    }

    /// `true` when no more bytes can be appended, even after compaction and growth.
    pub(crate) fn is_full(&self) -> bool {
        self.len() >= self.store.limit()
    }

    pub(crate) fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.store.release();
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.store.as_slice().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growable_queue_grows_to_bound_and_no_further() {
        let mut q = Queue::new(Growable::new(4, 16));
        assert_eq!(q.spare(1).len(), 4);
        q.spare(4)[..4].copy_from_slice(b"abcd");
        q.commit(4);
        assert!(q.spare(10).len() >= 10);
        q.consume(2);
        assert_eq!(q.data(), b"cd");
        assert_eq!(q.spare(100).len(), 14, "bounded at 16 after compaction");
        assert!(!q.reserve_exact(15));
        q.commit(14);
        assert!(q.is_full());
        q.consume(16);
        assert!(q.is_empty());
        q.release_if_empty();
        assert_eq!(q.capacity(), 0);
    }

    #[test]
    fn fixed_queue_never_grows() {
        let mut mem = [0u8; 8];
        let mut q = Queue::new(Fixed(&mut mem[..]));
        assert_eq!(q.spare(100).len(), 8);
        q.commit(8);
        assert_eq!(q.spare(1).len(), 0);
        assert!(q.is_full());
    }
}
