//! The alert rustls actually encrypted.
//!
//! rustls picks the alert for a failure in many places (about a hundred `send_fatal_alert`
//! calls, several alerts for one `Error` variant: a bad Finished and a bad record MAC are both
//! `Error::DecryptError`), and does not expose it. A plaintext alert is read back from the
//! outgoing bytes (`alerts::read_back`); an encrypted one passes through the record
//! encrypter, so our cipher suites are ring's with the AEAD wrapped: the wrapper notes the
//! code of a fatal alert it encrypts (thread-local, std only) and the engine takes it when it
//! reports the failure on the same thread. Records that are not alerts cost one comparison.
//! Without `std` nothing is noted and the engine falls back to its mapping.
//!
//! The same wrapper lets the engine send an alert rustls did not queue. rustls returns some
//! errors without any alert (a handshake message over its 64 KiB bound is refused by the
//! handshake deframer with `?`, past the code that sends `decode_error` for every other
//! malformed message); once the write side is encrypted the engine cannot write that alert
//! itself. Each encrypter is shared ([`WriteKeys`]) between rustls and the engine of the
//! connection (handed over through a thread-local slot right after rustls made it), so the
//! engine can encrypt one last alert record with the next sequence number.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use rustls::crypto::CipherSuiteCommon;
use rustls::crypto::cipher::{
    AeadKey, Iv, KeyBlockShape, MessageDecrypter, MessageEncrypter, OutboundChunks,
    OutboundOpaqueMessage, OutboundPlainMessage, Tls12AeadAlgorithm, Tls13AeadAlgorithm,
    UnsupportedOperationError,
};
use rustls::crypto::ring::cipher_suite as cs;
use rustls::{
    ConnectionTrafficSecrets, ContentType, ProtocolVersion, SupportedCipherSuite, Tls12CipherSuite,
    Tls13CipherSuite,
};

#[cfg(feature = "std")]
std::thread_local! {
    static SENT: core::cell::Cell<Option<u8>> = const { core::cell::Cell::new(None) };
    static NEW_KEYS: core::cell::RefCell<Option<WriteKeys>> =
        const { core::cell::RefCell::new(None) };
}

/// The code of the last fatal alert encrypted on this thread, clearing it.
pub(crate) fn take_encrypted_alert() -> Option<u8> {
    #[cfg(feature = "std")]
    return SENT.with(core::cell::Cell::take);
    #[cfg(not(feature = "std"))]
    None
}

/// The write keys rustls installed last on this thread, clearing the slot. The engine calls
/// this after every call into rustls, so what it finds belongs to its own connection.
pub(crate) fn take_new_write_keys() -> Option<WriteKeys> {
    #[cfg(feature = "std")]
    return NEW_KEYS.with(|k| k.borrow_mut().take());
    #[cfg(not(feature = "std"))]
    None
}

/// Note the code of a fatal alert `msg` carries (std only: without it nothing is noted).
#[cfg(feature = "std")]
fn note(msg: &OutboundPlainMessage<'_>) {
    if msg.typ != ContentType::Alert {
        return;
    }
    if let OutboundChunks::Single([2, code]) = msg.payload {
        let code = *code;
        SENT.with(|s| s.set(Some(code)));
    }
}

#[cfg(not(feature = "std"))]
fn note(_msg: &OutboundPlainMessage<'_>) {}

struct KeysInner {
    enc: Box<dyn MessageEncrypter>,
    /// The sequence number of the next record.
    next_seq: u64,
}

/// A connection's current record encrypter, shared by rustls and the engine.
#[derive(Clone)]
pub(crate) struct WriteKeys(Arc<spin::Mutex<KeysInner>>);

impl WriteKeys {
    fn shared(enc: Box<dyn MessageEncrypter>) -> Box<dyn MessageEncrypter> {
        let keys = Self(Arc::new(spin::Mutex::new(KeysInner { enc, next_seq: 0 })));
        #[cfg(feature = "std")]
        NEW_KEYS.with(|k| *k.borrow_mut() = Some(keys.clone()));
        Box::new(Encrypter(keys))
    }

    /// A fatal alert record encrypted with these keys and the next sequence number (to be
    /// the connection's last record).
    pub(crate) fn fatal_alert_record(&self, code: u8) -> Option<Vec<u8>> {
        let mut k = self.0.lock();
        let seq = k.next_seq;
        let payload = [2, code];
        let msg = OutboundPlainMessage {
            typ: ContentType::Alert,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(&payload),
        };
        let rec = k.enc.encrypt(msg, seq).ok()?;
        k.next_seq = seq.wrapping_add(1);
        Some(rec.encode())
    }
}

impl core::fmt::Debug for WriteKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("WriteKeys")
    }
}

struct Encrypter(WriteKeys);

impl MessageEncrypter for Encrypter {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, rustls::Error> {
        note(&msg);
        let mut k = self.0.0.lock();
        k.next_seq = seq.wrapping_add(1);
        k.enc.encrypt(msg, seq)
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        self.0.0.lock().enc.encrypted_payload_len(payload_len)
    }
}

struct Aead13(&'static dyn Tls13AeadAlgorithm);

impl Tls13AeadAlgorithm for Aead13 {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        WriteKeys::shared(self.0.encrypter(key, iv))
    }
    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        self.0.decrypter(key, iv)
    }
    fn key_len(&self) -> usize {
        self.0.key_len()
    }
    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        self.0.extract_keys(key, iv)
    }
    fn fips(&self) -> bool {
        self.0.fips()
    }
}

struct Aead12(&'static dyn Tls12AeadAlgorithm);

impl Tls12AeadAlgorithm for Aead12 {
    fn encrypter(&self, key: AeadKey, iv: &[u8], extra: &[u8]) -> Box<dyn MessageEncrypter> {
        WriteKeys::shared(self.0.encrypter(key, iv, extra))
    }
    fn decrypter(&self, key: AeadKey, iv: &[u8]) -> Box<dyn MessageDecrypter> {
        self.0.decrypter(key, iv)
    }
    fn key_block_shape(&self) -> KeyBlockShape {
        self.0.key_block_shape()
    }
    fn extract_keys(
        &self,
        key: AeadKey,
        iv: &[u8],
        explicit: &[u8],
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        self.0.extract_keys(key, iv, explicit)
    }
    fn fips(&self) -> bool {
        self.0.fips()
    }
}

/// ring's TLS 1.3 suite `s`; `None` for a TLS 1.2 suite.
const fn tls13(s: SupportedCipherSuite) -> Option<&'static Tls13CipherSuite> {
    match s {
        SupportedCipherSuite::Tls13(t) => Some(t),
        SupportedCipherSuite::Tls12(_) => None,
    }
}

/// ring's TLS 1.2 suite `s`; `None` for a TLS 1.3 suite.
const fn tls12(s: SupportedCipherSuite) -> Option<&'static Tls12CipherSuite> {
    match s {
        SupportedCipherSuite::Tls12(t) => Some(t),
        SupportedCipherSuite::Tls13(_) => None,
    }
}

macro_rules! spied13 {
    ($aead:ident, $suite:ident, $ring:expr) => {
        static $aead: Option<Aead13> = match tls13($ring) {
            Some(t) => Some(Aead13(t.aead_alg)),
            None => None,
        };
        static $suite: Option<Tls13CipherSuite> = match (tls13($ring), &$aead) {
            (Some(t), Some(aead)) => Some(Tls13CipherSuite {
                common: CipherSuiteCommon {
                    suite: t.common.suite,
                    hash_provider: t.common.hash_provider,
                    confidentiality_limit: t.common.confidentiality_limit,
                },
                hkdf_provider: t.hkdf_provider,
                aead_alg: aead,
                quic: t.quic,
            }),
            _ => None,
        };
    };
}

macro_rules! spied12 {
    ($aead:ident, $suite:ident, $ring:expr) => {
        static $aead: Option<Aead12> = match tls12($ring) {
            Some(t) => Some(Aead12(t.aead_alg)),
            None => None,
        };
        static $suite: Option<Tls12CipherSuite> = match (tls12($ring), &$aead) {
            (Some(t), Some(aead)) => Some(Tls12CipherSuite {
                common: CipherSuiteCommon {
                    suite: t.common.suite,
                    hash_provider: t.common.hash_provider,
                    confidentiality_limit: t.common.confidentiality_limit,
                },
                prf_provider: t.prf_provider,
                kx: t.kx,
                sign: t.sign,
                aead_alg: aead,
            }),
            _ => None,
        };
    };
}

spied13!(A13_AES128, S13_AES128, cs::TLS13_AES_128_GCM_SHA256);
spied13!(A13_CHACHA, S13_CHACHA, cs::TLS13_CHACHA20_POLY1305_SHA256);
spied13!(A13_AES256, S13_AES256, cs::TLS13_AES_256_GCM_SHA384);
spied12!(
    A12_E_AES128,
    S12_E_AES128,
    cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
);
spied12!(
    A12_R_AES128,
    S12_R_AES128,
    cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
);
spied12!(
    A12_E_CHACHA,
    S12_E_CHACHA,
    cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
);
spied12!(
    A12_R_CHACHA,
    S12_R_CHACHA,
    cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
);
spied12!(
    A12_E_AES256,
    S12_E_AES256,
    cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
);
spied12!(
    A12_R_AES256,
    S12_R_AES256,
    cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
);

/// `ring` (one of ring's suites) with its AEAD wrapped to note the alerts it encrypts; ring's
/// suite itself if it is not one of ours.
pub(crate) fn spied(ring: SupportedCipherSuite) -> SupportedCipherSuite {
    let id = ring.suite();
    let t13 = [&S13_AES128, &S13_CHACHA, &S13_AES256];
    let t12 = [
        &S12_E_AES128,
        &S12_R_AES128,
        &S12_E_CHACHA,
        &S12_R_CHACHA,
        &S12_E_AES256,
        &S12_R_AES256,
    ];
    if let Some(s) = t13.into_iter().flatten().find(|s| s.common.suite == id) {
        return SupportedCipherSuite::Tls13(s);
    }
    if let Some(s) = t12.into_iter().flatten().find(|s| s.common.suite == id) {
        return SupportedCipherSuite::Tls12(s);
    }
    ring
}
