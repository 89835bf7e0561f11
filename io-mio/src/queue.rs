//! The adapter's byte queue: the plaintext waiting for each side of a server connection,
//! the identity responder's request buffer and the client's decrypted input. Bytes are
//! appended at the back and consumed from the front (a read offset, no shifting); an empty
//! queue can give its memory back.

/// A byte queue with a read offset.
#[derive(Default)]
pub(crate) struct Queue {
    buf: Vec<u8>,
    off: usize,
}

impl Queue {
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.off..]
    }
    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.off
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.off == self.buf.len()
    }
    pub(crate) fn extend(&mut self, d: &[u8]) {
        if self.is_empty() {
            self.buf.clear();
            self.off = 0;
        }
        self.buf.extend_from_slice(d);
    }
    pub(crate) fn consume(&mut self, n: usize) {
        self.off = (self.off + n).min(self.buf.len());
        if self.is_empty() {
            self.buf.clear();
            self.off = 0;
            if self.buf.capacity() > 16 * 1024 {
                self.buf = Vec::new();
            }
        }
    }
    /// Queue `v`, taking the vector itself when nothing is pending (no copy).
    pub(crate) fn append(&mut self, v: Vec<u8>) {
        if self.is_empty() {
            self.buf = v;
            self.off = 0;
        } else {
            self.extend(&v);
        }
    }
    /// Bytes allocated (tests check that idle holders keep none).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Give the memory back while empty (an idle connection holds no buffer).
    pub(crate) fn release(&mut self) {
        if self.is_empty() {
            self.buf = Vec::new();
            self.off = 0;
        }
    }
}
