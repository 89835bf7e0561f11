//! Connection slots with generation checks, and the deadline queue of one worker.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use mio::Token;

/// Bits of a token that hold the slot index (about two million slots per worker).
const INDEX_BITS: u32 = 21;
/// Tokens at or above this value are reserved for listeners and the waker.
pub(crate) const RESERVED: usize = 1 << (usize::BITS - 1);
const GEN_MASK: usize = (RESERVED - 1) >> (INDEX_BITS + SIDE_BITS);

/// Which socket of a connection an event is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The TLS socket.
    Tls = 0,
    /// The plaintext socket (upstream in server mode, the local client in client mode).
    Plain = 1,
    /// A pooled upstream connection of a handler: the key is its slot in the worker's
    /// upstream pool, not a connection.
    Upstream = 2,
}

/// Bits of a token that hold the [`Side`].
const SIDE_BITS: u32 = 2;

/// A slot index plus the generation it was handed out with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub index: usize,
    pub generation: usize,
}

impl Key {
    pub(crate) fn token(self, side: Side) -> Token {
        Token(
            (self.generation & GEN_MASK) << (INDEX_BITS + SIDE_BITS)
                | self.index << SIDE_BITS
                | side as usize,
        )
    }

    /// The key and side a connection token names, or `None` for reserved tokens.
    pub(crate) fn from_token(t: Token) -> Option<(Self, Side)> {
        if t.0 >= RESERVED {
            return None;
        }
        let side = match t.0 & ((1 << SIDE_BITS) - 1) {
            0 => Side::Tls,
            1 => Side::Plain,
            2 => Side::Upstream,
            _ => return None,
        };
        let index = (t.0 >> SIDE_BITS) & ((1 << INDEX_BITS) - 1);
        let generation = t.0 >> (INDEX_BITS + SIDE_BITS);
        Some((Self { index, generation }, side))
    }
}

struct Slot<T> {
    generation: usize,
    value: Option<T>,
}

/// A slab whose keys carry a generation: a token from a closed connection never reaches the
/// connection that reuses its slot.
pub(crate) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Slab<T> {
    pub(crate) fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Store `value`; `None` when the index space is exhausted.
    pub(crate) fn insert_with(&mut self, make: impl FnOnce(Key) -> T) -> Option<Key> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                if self.slots.len() >= 1 << INDEX_BITS {
                    return None;
                }
                self.slots.push(Slot {
                    generation: 0,
                    value: None,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        slot.generation = (slot.generation + 1) & GEN_MASK;
        let key = Key {
            index,
            generation: slot.generation,
        };
        slot.value = Some(make(key));
        self.len += 1;
        Some(key)
    }

    pub(crate) fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        let slot = self.slots.get_mut(key.index)?;
        if slot.generation != key.generation {
            return None;
        }
        slot.value.as_mut()
    }

    pub(crate) fn remove(&mut self, key: Key) -> Option<T> {
        let slot = self.slots.get_mut(key.index)?;
        if slot.generation != key.generation {
            return None;
        }
        let v = slot.value.take()?;
        self.free.push(key.index);
        self.len -= 1;
        Some(v)
    }

    /// Keys of all live entries.
    pub(crate) fn keys(&self) -> Vec<Key> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.value.is_some())
            .map(|(index, s)| Key {
                index,
                generation: s.generation,
            })
            .collect()
    }
}

/// Deadlines of one worker, lazily invalidated: an entry is checked against the
/// connection's current deadline when it fires, so moving a deadline costs nothing until
/// then.
pub(crate) struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, Key)>>,
}

impl Deadlines {
    pub(crate) fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
        }
    }

    pub(crate) fn push(&mut self, at: Instant, key: Key) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest entry (possibly stale).
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pop one entry due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Key> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, k))| k),
            _ => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_token_does_not_reach_reused_slot() {
        let mut slab = Slab::new();
        let a = slab.insert_with(|_| "a").unwrap();
        let token = a.token(Side::Plain);
        assert_eq!(slab.remove(a), Some("a"));
        let b = slab.insert_with(|_| "b").unwrap();
        assert_eq!(a.index, b.index, "slot is reused");
        let (stale, side) = Key::from_token(token).unwrap();
        assert_eq!(side, Side::Plain);
        assert!(slab.get_mut(stale).is_none());
        let (fresh, side) = Key::from_token(b.token(Side::Tls)).unwrap();
        assert_eq!(side, Side::Tls);
        let (up, side) = Key::from_token(b.token(Side::Upstream)).unwrap();
        assert_eq!((up, side), (b, Side::Upstream));
        assert_eq!(slab.get_mut(fresh), Some(&mut "b"));
        assert_eq!(slab.len(), 1);
    }

    #[test]
    fn reserved_tokens_are_not_connections() {
        assert!(Key::from_token(Token(usize::MAX)).is_none());
        assert!(Key::from_token(Token(RESERVED)).is_none());
    }

    #[test]
    fn deadlines_pop_in_order() {
        let mut d = Deadlines::new();
        let t = Instant::now();
        let k = |i| Key {
            index: i,
            generation: 1,
        };
        d.push(t + std::time::Duration::from_millis(20), k(2));
        d.push(t, k(1));
        assert_eq!(d.next(), Some(t));
        assert_eq!(d.pop_due(t), Some(k(1)));
        assert_eq!(d.pop_due(t), None);
        assert_eq!(d.len(), 1);
    }
}
