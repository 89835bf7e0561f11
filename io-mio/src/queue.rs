//! The adapter's byte queue: plaintext waiting for one side of a connection.

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
    /// Give the memory back while empty (an idle connection holds no buffer).
    pub(crate) fn release(&mut self) {
        if self.is_empty() {
            self.buf = Vec::new();
            self.off = 0;
        }
    }
}
