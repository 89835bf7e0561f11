//! Session resumption state: server ticket keys, the server session-ID cache and the client
//! session cache.
//!
//! Everything here is bounded and works without `std`. Ticket keys rotate on a schedule driven
//! by the caller's time ([`TicketKeys::rotate_if_due`], called by every new server session),
//! never by a clock read inside the core.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::ToString;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};

use crate::backend::client_cache::ClientStore;
use crate::error::ConfigError;
use crate::sync::Mutex;
use crate::time::Time;

const NAME_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes of one ticket key in [`TicketKeys::from_bytes`]: a 16-byte name, a 32-byte AES key.
pub const TICKET_KEY_LEN: usize = 48;

struct TicketKey {
    name: [u8; NAME_LEN],
    key: aead::LessSafeKey,
}

impl TicketKey {
    fn from_secret(secret: &[u8]) -> Option<Self> {
        let (name, key) = secret.split_at(NAME_LEN);
        let key = aead::UnboundKey::new(&aead::AES_256_GCM, key).ok()?;
        Some(Self {
            name: name.try_into().ok()?,
            key: aead::LessSafeKey::new(key),
        })
    }

    fn random(rng: &SystemRandom) -> Option<Self> {
        let mut secret = [0u8; TICKET_KEY_LEN];
        rng.fill(&mut secret).ok()?;
        Self::from_secret(&secret)
    }
}

struct KeyState {
    /// Newest first; the first key encrypts, every key decrypts.
    keys: Vec<TicketKey>,
    next_rotation: Option<Time>,
}

pub(crate) struct TicketInner {
    state: Mutex<KeyState>,
    /// `None`: fixed keys, rotated only by replacing them.
    rotation: Option<Duration>,
    lifetime_secs: u32,
    rng: SystemRandom,
}

/// Keys that encrypt and decrypt session tickets (TLS 1.3 and TLS 1.2), with AES-256-GCM.
///
/// Two kinds: generated keys that rotate every `rotation` (the previous key keeps decrypting
/// for one more period), or fixed keys loaded from bytes shared by a fleet of servers so that
/// any instance resumes any other's tickets (the first key encrypts, all decrypt; rotate by
/// loading a new list). Cloning shares the keys.
#[derive(Clone)]
pub struct TicketKeys(pub(crate) Arc<TicketInner>);

impl TicketKeys {
    /// Default rotation period of generated keys.
    pub const DEFAULT_ROTATION: Duration = Duration::from_secs(6 * 3600);

    /// A random key that rotates every `rotation` (at least one second; at most 7 days, the
    /// longest ticket lifetime TLS 1.3 allows).
    ///
    /// # Panics
    /// Never on valid input; if the system RNG fails the keys are empty and tickets are
    /// simply not issued (resumption by session ID still works).
    pub fn generate(rotation: Duration) -> Self {
        let rotation = rotation.clamp(Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600));
        let rng = SystemRandom::new();
        let keys = TicketKey::random(&rng).into_iter().collect();
        Self(Arc::new(TicketInner {
            state: Mutex::new(KeyState {
                keys,
                next_rotation: None,
            }),
            rotation: Some(rotation),
            lifetime_secs: u32::try_from(rotation.as_secs()).unwrap_or(u32::MAX),
            rng,
        }))
    }

    /// Fixed keys from concatenated 48-byte records (16-byte key name, 32-byte AES-256 key),
    /// first record encrypts. `lifetime` is the ticket lifetime announced to clients.
    pub fn from_bytes(bytes: &[u8], lifetime: Duration) -> Result<Self, ConfigError> {
        if bytes.is_empty() || bytes.len() % TICKET_KEY_LEN != 0 {
            return Err(ConfigError::BadTicketKeys {
                detail: alloc::format!(
                    "{} bytes is not a non-zero multiple of {TICKET_KEY_LEN}",
                    bytes.len()
                ),
            });
        }
        let keys = bytes
            .chunks_exact(TICKET_KEY_LEN)
            .map(TicketKey::from_secret)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ConfigError::BadTicketKeys {
                detail: "unusable key".to_string(),
            })?;
        let lifetime = lifetime.min(Duration::from_secs(7 * 24 * 3600));
        Ok(Self(Arc::new(TicketInner {
            state: Mutex::new(KeyState {
                keys,
                next_rotation: None,
            }),
            rotation: None,
            lifetime_secs: u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX),
            rng: SystemRandom::new(),
        })))
    }

    /// Rotate generated keys when their period has passed at `now`. The first call only
    /// starts the schedule. Cheap when nothing is due; fixed keys never rotate here.
    pub fn rotate_if_due(&self, now: Time) -> bool {
        let Some(rotation) = self.0.rotation else {
            return false;
        };
        let mut st = self.0.state.lock();
        match st.next_rotation {
            None => {
                st.next_rotation = Some(now.saturating_add(rotation));
                false
            }
            Some(due) if now >= due => {
                if let Some(k) = TicketKey::random(&self.0.rng) {
                    st.keys.insert(0, k);
                    st.keys.truncate(2);
                }
                st.next_rotation = Some(now.saturating_add(rotation));
                true
            }
            Some(_) => false,
        }
    }

    /// Number of keys that can decrypt.
    pub fn len(&self) -> usize {
        self.0.state.lock().keys.len()
    }

    /// `true` when there is no key (tickets are not issued).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn lifetime_secs(&self) -> u32 {
        self.0.lifetime_secs
    }

    pub(crate) fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.0.rng.fill(&mut nonce).ok()?;
        let st = self.0.state.lock();
        let key = st.keys.first()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (head, body) = out.split_at_mut(NAME_LEN + NONCE_LEN);
        let tag = key
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(&head[..NAME_LEN]),
                body,
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    pub(crate) fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = sealed.split_at(NAME_LEN);
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let st = self.0.state.lock();
        let key = st.keys.iter().find(|k| k.name == name)?;
        let mut buf = ct.to_vec();
        let plain_len = key
            .key
            .open_in_place(nonce, aead::Aad::from(name), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys")
            .field("keys", &self.len())
            .field("rotation", &self.0.rotation)
            .finish()
    }
}

struct ServerCacheState {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    order: VecDeque<Vec<u8>>,
}

pub(crate) struct ServerCacheInner {
    state: Mutex<ServerCacheState>,
    capacity: usize,
}

/// Server-side store of TLS 1.2 sessions by session ID (and TLS 1.3 sessions when tickets are
/// disabled). Bounded: the oldest entry is evicted first. Cloning shares the cache.
#[derive(Clone)]
pub struct ServerSessionCache(pub(crate) Arc<ServerCacheInner>);

impl ServerSessionCache {
    /// Default number of sessions kept.
    pub const DEFAULT_CAPACITY: usize = 4096;

    /// A cache of at most `capacity` sessions.
    pub fn new(capacity: usize) -> Self {
        Self(Arc::new(ServerCacheInner {
            state: Mutex::new(ServerCacheState {
                map: BTreeMap::new(),
                order: VecDeque::new(),
            }),
            capacity,
        }))
    }

    /// Sessions currently stored.
    pub fn len(&self) -> usize {
        self.0.state.lock().map.len()
    }

    /// `true` when no session is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        if self.0.capacity == 0 {
            return false;
        }
        let mut st = self.0.state.lock();
        if st.map.insert(key.clone(), value).is_none() {
            st.order.push_back(key);
        }
        while st.map.len() > self.0.capacity {
            let Some(old) = st.order.pop_front() else {
                break;
            };
            st.map.remove(&old);
        }
        true
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.state.lock().map.get(key).cloned()
    }

    pub(crate) fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut st = self.0.state.lock();
        let v = st.map.remove(key)?;
        st.order.retain(|k| k.as_slice() != key);
        Some(v)
    }

    pub(crate) fn enabled(&self) -> bool {
        self.0.capacity > 0
    }
}

impl fmt::Debug for ServerSessionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSessionCache")
            .field("capacity", &self.0.capacity)
            .finish()
    }
}

/// Client-side session cache: lets a later connection to the same server name resume.
/// Fixed size: at most `capacity` servers, each with one TLS 1.2 session and up to
/// [`ClientSessionCache::TICKETS_PER_SERVER`] TLS 1.3 tickets; the least recently stored
/// server is evicted first. Cloning shares the cache.
#[derive(Clone)]
pub struct ClientSessionCache(pub(crate) Arc<ClientStore>);

impl ClientSessionCache {
    /// Default number of servers remembered.
    pub const DEFAULT_CAPACITY: usize = 64;
    /// TLS 1.3 tickets kept per server.
    pub const TICKETS_PER_SERVER: usize = 4;

    /// A cache for at most `capacity` servers.
    pub fn new(capacity: usize) -> Self {
        Self(Arc::new(ClientStore::new(
            capacity,
            Self::TICKETS_PER_SERVER,
        )))
    }

    /// Servers currently remembered.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `true` when no server is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget everything.
    pub fn clear(&self) {
        self.0.clear();
    }
}

impl fmt::Debug for ClientSessionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSessionCache")
            .field("capacity", &self.0.capacity())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_round_trip_and_tamper_detection() {
        let keys = TicketKeys::generate(Duration::from_secs(60));
        let sealed = keys.seal(b"session state").unwrap();
        assert_eq!(keys.open(&sealed).unwrap(), b"session state");
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(keys.open(&bad).is_none());
        assert!(keys.open(&sealed[..10]).is_none());
    }

    #[test]
    fn rotation_keeps_previous_key_for_one_period() {
        let keys = TicketKeys::generate(Duration::from_secs(60));
        let t0 = Time::from_unix_secs(1000);
        assert!(!keys.rotate_if_due(t0));
        let old = keys.seal(b"a").unwrap();
        assert!(!keys.rotate_if_due(Time::from_unix_secs(1059)));
        assert!(keys.rotate_if_due(Time::from_unix_secs(1060)));
        assert_eq!(keys.len(), 2);
        assert!(keys.open(&old).is_some(), "previous key still decrypts");
        let newer = keys.seal(b"b").unwrap();
        assert_ne!(old[..NAME_LEN], newer[..NAME_LEN], "new key encrypts");
        assert!(keys.rotate_if_due(Time::from_unix_secs(1120)));
        assert!(
            keys.open(&old).is_none(),
            "two periods later the first key is gone"
        );
        assert!(keys.open(&newer).is_some());
    }

    #[test]
    fn fixed_keys_first_encrypts_all_decrypt() {
        let mut bytes = [7u8; 2 * TICKET_KEY_LEN];
        bytes[0] = 1;
        let both = TicketKeys::from_bytes(&bytes, Duration::from_secs(3600)).unwrap();
        let second_only =
            TicketKeys::from_bytes(&bytes[TICKET_KEY_LEN..], Duration::from_secs(3600)).unwrap();
        let first_only =
            TicketKeys::from_bytes(&bytes[..TICKET_KEY_LEN], Duration::from_secs(3600)).unwrap();
        let t = both.seal(b"x").unwrap();
        assert!(first_only.open(&t).is_some());
        assert!(second_only.open(&t).is_none());
        assert!(both.open(&second_only.seal(b"y").unwrap()).is_some());
        assert!(TicketKeys::from_bytes(&bytes[..47], Duration::from_secs(1)).is_err());
        assert!(!both.rotate_if_due(Time::from_unix_secs(u64::MAX / 2000)));
    }

    #[test]
    fn server_cache_is_bounded_and_evicts_oldest() {
        let c = ServerSessionCache::new(2);
        c.put(b"a".to_vec(), b"1".to_vec());
        c.put(b"b".to_vec(), b"2".to_vec());
        c.put(b"c".to_vec(), b"3".to_vec());
        assert_eq!(c.len(), 2);
        assert!(c.get(b"a").is_none());
        assert_eq!(c.take(b"b").unwrap(), b"2");
        assert!(c.get(b"b").is_none());
        assert!(!ServerSessionCache::new(0).put(b"a".to_vec(), b"1".to_vec()));
    }
}
