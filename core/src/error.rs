//! Errors: what failed, why, and which alert the peer was sent.
//!
//! Three families, one per layer:
//! - [`ConfigError`]: a policy could not be built (bad PEM, key mismatch, expired own
//!   certificate, empty trust store, ...). Nothing was sent to anyone.
//! - [`Error`]: a session failed. It carries a [`Reason`] (the policy rule or the TLS error
//!   that decided) and the [`Alert`] that was encoded for the peer, if any. The session is
//!   terminal afterwards.
//! - [`SendError`]: application data could not be queued right now; the session is intact.

use alloc::boxed::Box;
use alloc::string::String;
use core::fmt;
use core::time::Duration;

use crate::cert::CertInfo;
use crate::time::Time;

/// A TLS alert description (RFC 8446 section 6, RFC 5246 section 7.2).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alert {
    /// `close_notify` (0)
    CloseNotify,
    /// `unexpected_message` (10)
    UnexpectedMessage,
    /// `bad_record_mac` (20)
    BadRecordMac,
    /// `record_overflow` (22)
    RecordOverflow,
    /// `handshake_failure` (40)
    HandshakeFailure,
    /// `bad_certificate` (42)
    BadCertificate,
    /// `unsupported_certificate` (43)
    UnsupportedCertificate,
    /// `certificate_revoked` (44)
    CertificateRevoked,
    /// `certificate_expired` (45); also sent for a certificate that is not yet valid.
    CertificateExpired,
    /// `certificate_unknown` (46)
    CertificateUnknown,
    /// `illegal_parameter` (47)
    IllegalParameter,
    /// `unknown_ca` (48)
    UnknownCa,
    /// `access_denied` (49)
    AccessDenied,
    /// `decode_error` (50)
    DecodeError,
    /// `decrypt_error` (51)
    DecryptError,
    /// `protocol_version` (70)
    ProtocolVersion,
    /// `insufficient_security` (71)
    InsufficientSecurity,
    /// `internal_error` (80)
    InternalError,
    /// `inappropriate_fallback` (86)
    InappropriateFallback,
    /// `user_canceled` (90)
    UserCanceled,
    /// `no_renegotiation` (100)
    NoRenegotiation,
    /// `missing_extension` (109)
    MissingExtension,
    /// `unsupported_extension` (110)
    UnsupportedExtension,
    /// `unrecognized_name` (112)
    UnrecognizedName,
    /// `bad_certificate_status_response` (113)
    BadCertificateStatusResponse,
    /// `unknown_psk_identity` (115)
    UnknownPskIdentity,
    /// `certificate_required` (116)
    CertificateRequired,
    /// `no_application_protocol` (120)
    NoApplicationProtocol,
    /// Any other code.
    Other(u8),
}

const ALERT_TABLE: &[(Alert, u8, &str)] = &[
    (Alert::CloseNotify, 0, "close_notify"),
    (Alert::UnexpectedMessage, 10, "unexpected_message"),
    (Alert::BadRecordMac, 20, "bad_record_mac"),
    (Alert::RecordOverflow, 22, "record_overflow"),
    (Alert::HandshakeFailure, 40, "handshake_failure"),
    (Alert::BadCertificate, 42, "bad_certificate"),
    (Alert::UnsupportedCertificate, 43, "unsupported_certificate"),
    (Alert::CertificateRevoked, 44, "certificate_revoked"),
    (Alert::CertificateExpired, 45, "certificate_expired"),
    (Alert::CertificateUnknown, 46, "certificate_unknown"),
    (Alert::IllegalParameter, 47, "illegal_parameter"),
    (Alert::UnknownCa, 48, "unknown_ca"),
    (Alert::AccessDenied, 49, "access_denied"),
    (Alert::DecodeError, 50, "decode_error"),
    (Alert::DecryptError, 51, "decrypt_error"),
    (Alert::ProtocolVersion, 70, "protocol_version"),
    (Alert::InsufficientSecurity, 71, "insufficient_security"),
    (Alert::InternalError, 80, "internal_error"),
    (Alert::InappropriateFallback, 86, "inappropriate_fallback"),
    (Alert::UserCanceled, 90, "user_canceled"),
    (Alert::NoRenegotiation, 100, "no_renegotiation"),
    (Alert::MissingExtension, 109, "missing_extension"),
    (Alert::UnsupportedExtension, 110, "unsupported_extension"),
    (Alert::UnrecognizedName, 112, "unrecognized_name"),
    (
        Alert::BadCertificateStatusResponse,
        113,
        "bad_certificate_status_response",
    ),
    (Alert::UnknownPskIdentity, 115, "unknown_psk_identity"),
    (Alert::CertificateRequired, 116, "certificate_required"),
    (Alert::NoApplicationProtocol, 120, "no_application_protocol"),
];

impl Alert {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Self::Other(c) => c,
            known => ALERT_TABLE
                .iter()
                .find(|(a, _, _)| *a == known)
                .map_or(0, |(_, c, _)| *c),
        }
    }

    /// The alert with wire code `code`.
    pub fn from_code(code: u8) -> Self {
        ALERT_TABLE
            .iter()
            .find(|(_, c, _)| *c == code)
            .map_or(Self::Other(code), |(a, _, _)| *a)
    }

    /// The RFC name, e.g. `"access_denied"`.
    pub fn name(self) -> &'static str {
        ALERT_TABLE
            .iter()
            .find(|(a, _, _)| *a == self)
            .map_or("unknown_alert", |(_, _, n)| n)
    }
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(c) => write!(f, "alert({c})"),
            a => f.write_str(a.name()),
        }
    }
}

/// Why a session failed: the policy rule or TLS error that decided.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The first bytes were a plaintext HTTP request: this port requires TLS.
    /// No alert is sent; an adapter answers `HTTP/1.1 400` and closes.
    PlaintextHttp,
    /// The first bytes were not a TLS handshake record.
    NotTls,
    /// The peer offers no TLS version this policy enables (ONE Record: TLS 1.2 or newer).
    /// `highest_offered` is the newest version in its hello (e.g. `0x0302` for TLS 1.1),
    /// when the hello could be read.
    ProtocolVersion {
        /// Newest version the peer offered.
        highest_offered: Option<u16>,
    },
    /// The client asked for a server name that no policy serves (or sent none and there is
    /// no default policy).
    UnknownServerName,
    /// The handshake did not complete before the policy's deadline.
    HandshakeTimeout {
        /// The configured handshake timeout.
        after: Duration,
    },
    /// Client authentication is required and the client presented no certificate.
    NoPeerCertificate,
    /// The peer's certificate (or one in its chain) has expired.
    CertificateExpired {
        /// The certificate's `notAfter`, when known.
        not_after: Option<Time>,
        /// The time used for the check.
        now: Option<Time>,
    },
    /// The peer's certificate is not valid yet.
    CertificateNotYetValid {
        /// The certificate's `notBefore`, when known.
        not_before: Option<Time>,
        /// The time used for the check.
        now: Option<Time>,
    },
    /// The peer's chain does not lead to a trusted CA.
    UnknownIssuer,
    /// The peer's certificate is revoked by a loaded CRL.
    Revoked,
    /// No loaded CRL covers the certificate and the policy treats that as a failure.
    RevocationStatusUnknown,
    /// A CRL needed for the check is past its `nextUpdate` (plus the policy's grace) and the
    /// policy enforces expiry. This is the operator's problem, not the peer's: publish a
    /// fresh CRL.
    CrlExpired {
        /// Which CRL: its name in [`crate::Revocation::names`] (e.g. its file) or else its
        /// issuer, when it could be determined.
        crl: Option<Box<str>>,
        /// The CRL's `nextUpdate`, when known.
        next_update: Option<Time>,
    },
    /// The server certificate is not valid for the name the client asked for.
    NameMismatch,
    /// The certificate is unusable for another reason (encoding, signature, key usage).
    BadCertificate,
    /// The chain verified but matched none of the policy's identity rules.
    IdentityDenied,
    /// No version, cipher suite, group or signature scheme in common.
    NoCommonParameters,
    /// ALPN was offered and no protocol is in common.
    NoApplicationProtocol,
    /// The peer sent this fatal alert.
    PeerAlert(Alert),
    /// The peer violated the protocol (decode error, unexpected message, bad MAC, ...).
    ProtocolViolation,
    /// The peer needed more buffer than the session may use.
    BufferLimit {
        /// Which buffer was too small.
        buffer: Buffer,
        /// Bytes the next step needs.
        required: usize,
        /// The configured bound.
        limit: usize,
    },
    /// The transport ended before the peer sent `close_notify`.
    UnexpectedEof,
    /// An internal failure (random number generation, an unexpected library state).
    Internal,
}

impl Reason {
    /// The coarse category used in statistics and metrics.
    pub fn failure(&self) -> Failure {
        match self {
            Self::PlaintextHttp | Self::NotTls => Failure::Plaintext,
            Self::ProtocolVersion { .. } => Failure::ProtocolVersion,
            Self::UnknownServerName => Failure::UnknownServerName,
            Self::HandshakeTimeout { .. } => Failure::Timeout,
            Self::NoPeerCertificate => Failure::NoPeerCertificate,
            Self::CertificateExpired { .. } | Self::CertificateNotYetValid { .. } => {
                Failure::Expired
            }
            Self::UnknownIssuer => Failure::UnknownCa,
            Self::Revoked | Self::RevocationStatusUnknown => Failure::Revoked,
            Self::CrlExpired { .. } => Failure::CrlExpired,
            Self::NameMismatch | Self::BadCertificate => Failure::BadCertificate,
            Self::IdentityDenied => Failure::IdentityDenied,
            Self::PeerAlert(_) => Failure::PeerAlert,
            Self::NoCommonParameters | Self::NoApplicationProtocol => Failure::Negotiation,
            Self::ProtocolViolation | Self::BufferLimit { .. } | Self::UnexpectedEof => {
                Failure::Protocol
            }
            Self::Internal => Failure::Internal,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PlaintextHttp => {
                f.write_str("plaintext HTTP request on a TLS port (TLS is required)")
            }
            Self::NotTls => f.write_str("peer did not start a TLS handshake"),
            Self::ProtocolVersion {
                highest_offered: Some(v),
            } => write!(
                f,
                "peer offers at most {}, TLS 1.2 or newer is required",
                version_name(*v)
            ),
            Self::ProtocolVersion {
                highest_offered: None,
            } => f.write_str("no TLS version in common (TLS 1.2 or newer is required)"),
            Self::UnknownServerName => f.write_str("requested server name is not served here"),
            Self::HandshakeTimeout { after } => {
                write!(
                    f,
                    "handshake did not complete within {} ms",
                    after.as_millis()
                )
            }
            Self::NoPeerCertificate => {
                f.write_str("client certificate required but none presented")
            }
            Self::CertificateExpired {
                not_after: Some(na),
                now: Some(now),
            } => {
                write!(f, "peer certificate expired (not after {na}, now {now})")
            }
            Self::CertificateExpired { .. } => f.write_str("peer certificate expired"),
            Self::CertificateNotYetValid {
                not_before: Some(nb),
                now: Some(now),
            } => {
                write!(
                    f,
                    "peer certificate not yet valid (not before {nb}, now {now})"
                )
            }
            Self::CertificateNotYetValid { .. } => f.write_str("peer certificate not yet valid"),
            Self::UnknownIssuer => f.write_str("peer certificate is not issued by a trusted CA"),
            Self::Revoked => f.write_str("peer certificate is revoked"),
            Self::RevocationStatusUnknown => {
                f.write_str("revocation status of peer certificate is unknown")
            }
            Self::CrlExpired { crl, next_update } => {
                f.write_str("certificate revocation list ")?;
                if let Some(c) = crl {
                    write!(f, "{c} ")?;
                }
                f.write_str("has expired")?;
                if let Some(nu) = next_update {
                    write!(f, " (next update was due {nu})")?;
                }
                Ok(())
            }
            Self::NameMismatch => {
                f.write_str("server certificate is not valid for the requested name")
            }
            Self::BadCertificate => f.write_str("peer certificate is unusable"),
            Self::IdentityDenied => f.write_str("peer identity matches no allow rule"),
            Self::NoCommonParameters => {
                f.write_str("no cipher suite, group or signature scheme in common")
            }
            Self::NoApplicationProtocol => f.write_str("no application protocol (ALPN) in common"),
            Self::PeerAlert(a) => write!(f, "peer sent fatal alert {a}"),
            Self::ProtocolViolation => f.write_str("peer violated the TLS protocol"),
            Self::BufferLimit {
                buffer,
                required,
                limit,
            } => {
                write!(
                    f,
                    "peer needs a {required}-byte {buffer} buffer, the limit is {limit} bytes"
                )
            }
            Self::UnexpectedEof => f.write_str("connection closed without close_notify"),
            Self::Internal => f.write_str("internal error"),
        }
    }
}

/// One of a session's two buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffer {
    /// Bytes received from the peer, not yet processed.
    Incoming,
    /// TLS bytes waiting to be transmitted.
    Outgoing,
}

impl fmt::Display for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Incoming => "incoming",
            Self::Outgoing => "outgoing",
        })
    }
}

/// The TLS library's own description of a failure, for diagnostics (its wording is not
/// stable; match on [`Reason`] instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsDetail(Box<str>);

impl TlsDetail {
    /// The description.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TlsDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A printable name for a TLS version code.
pub(crate) fn version_name(v: u16) -> &'static str {
    match v {
        0x0002 => "SSL 2.0",
        0x0300 => "SSL 3.0",
        0x0301 => "TLS 1.0",
        0x0302 => "TLS 1.1",
        0x0303 => "TLS 1.2",
        0x0304 => "TLS 1.3",
        _ => "an unknown version",
    }
}

/// Coarse failure categories, for statistics (one counter each).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// Not TLS (plaintext HTTP or other bytes).
    Plaintext,
    /// Version below TLS 1.2 or none in common.
    ProtocolVersion,
    /// SNI name not served.
    UnknownServerName,
    /// Handshake deadline passed.
    Timeout,
    /// mTLS required, no client certificate.
    NoPeerCertificate,
    /// Certificate expired or not yet valid.
    Expired,
    /// Certificate revoked, or revocation status not established.
    Revoked,
    /// A CRL needed for the check is past its `nextUpdate`: the peer is refused because of
    /// our stale CRL, not because of its certificate.
    CrlExpired,
    /// Chain does not lead to a trusted CA.
    UnknownCa,
    /// Certificate unusable (encoding, name, signature, purpose).
    BadCertificate,
    /// Identity allow-list did not match.
    IdentityDenied,
    /// No parameters in common (suite, group, ALPN).
    Negotiation,
    /// The peer refused us with an alert.
    PeerAlert,
    /// Protocol violation, truncation or buffer limit.
    Protocol,
    /// Internal error.
    Internal,
}

impl Failure {
    /// All categories, in a stable order.
    pub const ALL: [Self; 15] = [
        Self::Plaintext,
        Self::ProtocolVersion,
        Self::UnknownServerName,
        Self::Timeout,
        Self::NoPeerCertificate,
        Self::Expired,
        Self::Revoked,
        Self::CrlExpired,
        Self::UnknownCa,
        Self::BadCertificate,
        Self::IdentityDenied,
        Self::Negotiation,
        Self::PeerAlert,
        Self::Protocol,
        Self::Internal,
    ];

    /// A stable snake_case label, usable as a metrics label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::ProtocolVersion => "protocol_version",
            Self::UnknownServerName => "unknown_server_name",
            Self::Timeout => "timeout",
            Self::NoPeerCertificate => "no_client_cert",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::CrlExpired => "crl_expired",
            Self::UnknownCa => "unknown_ca",
            Self::BadCertificate => "bad_certificate",
            Self::IdentityDenied => "identity_denied",
            Self::Negotiation => "negotiation",
            Self::PeerAlert => "peer_alert",
            Self::Protocol => "protocol",
            Self::Internal => "internal",
        }
    }

    pub(crate) fn index(self) -> usize {
        Self::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }
}

/// A session failure. The session is terminal once it returned one; any alert named by
/// [`Error::alert_sent`] has already been placed in the outgoing buffer for transmission.
#[derive(Clone, Debug)]
pub struct Error {
    reason: Reason,
    alert_sent: Option<Alert>,
    tls: Option<TlsDetail>,
    presented: Option<Box<CertInfo>>,
}

impl Error {
    pub(crate) fn new(reason: Reason, alert_sent: Option<Alert>) -> Self {
        Self {
            reason,
            alert_sent,
            tls: None,
            presented: None,
        }
    }

    pub(crate) fn with_presented(mut self, cert: Option<CertInfo>) -> Self {
        self.presented = cert.map(Box::new);
        self
    }

    /// Attach the TLS library's description of the failure.
    pub(crate) fn with_tls(mut self, e: impl fmt::Display) -> Self {
        self.tls = Some(TlsDetail(alloc::format!("{e}").into()));
        self
    }

    /// Why the session failed.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }

    /// The fatal alert queued for the peer, if one was sent. `None` when the peer refused us
    /// (see [`Reason::PeerAlert`]), for plaintext probes, and for timeouts.
    ///
    /// This is the alert on the wire: a plaintext alert record is read back from the
    /// outgoing bytes, an encrypted one is noted by the record encrypter as it is encrypted
    /// (feature `std`; without it an encrypted alert is named from the error, as rustls
    /// chooses it in most cases).
    pub fn alert_sent(&self) -> Option<Alert> {
        self.alert_sent
    }

    /// The statistics category.
    pub fn failure(&self) -> Failure {
        self.reason.failure()
    }

    /// The end-entity certificate the peer presented, when verifying it failed (unknown CA,
    /// expired, revoked, identity denied, ...), parsed but **not trusted**: it names who
    /// was refused, for logs. `None` when the peer presented none, when the failure came
    /// before or after certificate verification, or without the `std` feature (the
    /// certificate is captured on the thread that drives the session).
    pub fn presented_certificate(&self) -> Option<&CertInfo> {
        self.presented.as_deref()
    }

    /// The TLS library's description of this failure, for diagnostics.
    pub fn tls_detail(&self) -> Option<&TlsDetail> {
        self.tls.as_ref()
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.reason == other.reason && self.alert_sent == other.alert_sent
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)?;
        if let Some(a) = self.alert_sent {
            write!(f, "; sent {a} alert")?;
        }
        if let Some(e) = &self.tls {
            write!(f, " ({e})")?;
        }
        Ok(())
    }
}

impl core::error::Error for Error {}

/// Application data could not be queued. The session is unchanged.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The handshake has not completed yet.
    NotEstablished,
    /// This side has sent `close_notify` (or the session failed): no more data can be sent.
    Closed,
    /// The outgoing buffer cannot hold even one record of the requested size; `required`
    /// bytes are needed and the buffer's bound is `capacity`.
    BufferTooSmall {
        /// Bytes needed for the smallest record.
        required: usize,
        /// The outgoing buffer's bound.
        capacity: usize,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotEstablished => f.write_str("handshake not complete"),
            Self::Closed => f.write_str("session closed for sending"),
            Self::BufferTooSmall { required, capacity } => write!(
                f,
                "outgoing buffer too small: {required} bytes required, capacity {capacity}"
            ),
        }
    }
}

impl core::error::Error for SendError {}

/// A policy could not be built. Each variant names the problem; file-based loaders wrap it
/// in [`ConfigError::File`] with the path.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A PEM input could not be parsed.
    Pem {
        /// What was being read ("certificate chain", "private key", "CA bundle", "CRL").
        what: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// The input holds no certificate.
    NoCertificate {
        /// What was being read.
        what: &'static str,
    },
    /// The input holds no private key (PKCS#8, SEC1 or PKCS#1).
    NoPrivateKey,
    /// The private key is encrypted with a passphrase, which is not supported: decrypt it
    /// first (`openssl pkey -in key.pem -out key-decrypted.pem`) and protect the file with
    /// its permissions.
    EncryptedPrivateKey {
        /// How it is encrypted: `PKCS#8 ENCRYPTED PRIVATE KEY` or `PEM Proc-Type 4,ENCRYPTED`.
        format: &'static str,
    },
    /// The key's algorithm is not supported (ring: ECDSA P-256/P-384, Ed25519, RSA 2048+).
    UnsupportedKeyType,
    /// The private key does not belong to the certificate's public key.
    KeyMismatch,
    /// The own certificate has expired.
    CertificateExpired {
        /// Its `notAfter`.
        not_after: Time,
        /// The time of the check.
        now: Time,
    },
    /// The own certificate is not valid yet.
    CertificateNotYetValid {
        /// Its `notBefore`.
        not_before: Time,
        /// The time of the check.
        now: Time,
    },
    /// The own certificate could not be parsed.
    BadCertificate {
        /// The parser's message.
        detail: String,
    },
    /// The trust store is empty: that would trust nothing (never everything).
    EmptyTrustStore,
    /// A CA certificate could not be used as a trust anchor.
    BadTrustAnchor {
        /// Index in the bundle.
        index: usize,
        /// Why.
        detail: String,
    },
    /// A CRL could not be parsed.
    BadCrl {
        /// Index in the list.
        index: usize,
        /// Why.
        detail: String,
    },
    /// A CRL's issuer is none of the certificates in the trust store (the CA bundle): a
    /// CRL of another CA, or of an intermediate CA that is not in the bundle. Such a CRL
    /// covers none of the certificates the policy accepts and would silently turn
    /// revocation checking off (or refuse everyone).
    CrlIssuerUnknown {
        /// Index in the list.
        index: usize,
        /// The CRL's issuer, RFC 4514.
        issuer: String,
    },
    /// A CRL's signature does not verify with the key of the trust-store certificate
    /// named as its issuer (a forged or damaged CRL, or an issuer re-keyed since).
    CrlBadSignature {
        /// Index in the list.
        index: usize,
        /// The CRL's issuer, RFC 4514.
        issuer: String,
        /// Why.
        detail: String,
    },
    /// A CRL's issuer in the trust store has a key usage extension without `cRLSign`: that
    /// CA may not sign CRLs (RFC 5280 section 6.3.3 (f); OpenSSL refuses such a CRL too). A
    /// CA certificate without a key usage extension may (as rustls-webpki reads it).
    CrlIssuerNotCrlSigner {
        /// Index in the list.
        index: usize,
        /// The CRL's issuer, RFC 4514.
        issuer: String,
    },
    /// CRLs were given for a server policy without client authentication: there is no
    /// client certificate to check them against.
    CrlWithoutClientAuth,
    /// Narrowing removed every cipher suite or every group.
    NothingEnabled {
        /// "cipher suites" or "key exchange groups".
        what: &'static str,
    },
    /// An ALPN protocol name is empty or longer than 255 bytes.
    InvalidAlpn,
    /// A server name is not a valid DNS name or IP address.
    InvalidServerName {
        /// The name given.
        name: String,
    },
    /// Two policies were registered for the same server name.
    DuplicateServerName {
        /// The name given twice.
        name: String,
    },
    /// An identity rule cannot match anything (e.g. an empty prefix).
    InvalidIdentityRule {
        /// Why.
        detail: String,
    },
    /// Ticket key material is malformed.
    BadTicketKeys {
        /// Why.
        detail: String,
    },
    /// Problem in a file.
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        error: Box<ConfigError>,
    },
    /// A file could not be read.
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        detail: String,
    },
    /// rustls refused the configuration.
    Tls {
        /// rustls' message.
        detail: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pem { what, detail } => write!(f, "malformed PEM in {what}: {detail}"),
            Self::NoCertificate { what } => write!(f, "no certificate found in {what}"),
            Self::NoPrivateKey => {
                f.write_str("no private key found (expected PKCS#8, SEC1 or PKCS#1 PEM)")
            }
            Self::EncryptedPrivateKey { format } => write!(
                f,
                "encrypted private keys are not supported ({format}): decrypt it with \
                 `openssl pkey -in key.pem -out key-decrypted.pem` and protect the file with \
                 its permissions"
            ),
            Self::UnsupportedKeyType => f.write_str(
                "unsupported private key type (use ECDSA P-256/P-384, Ed25519 or RSA 2048+)",
            ),
            Self::KeyMismatch => f.write_str("private key does not match the certificate"),
            Self::CertificateExpired { not_after, now } => {
                write!(f, "certificate expired (not after {not_after}, now {now})")
            }
            Self::CertificateNotYetValid { not_before, now } => {
                write!(
                    f,
                    "certificate not yet valid (not before {not_before}, now {now})"
                )
            }
            Self::BadCertificate { detail } => write!(f, "unparsable certificate: {detail}"),
            Self::EmptyTrustStore => {
                f.write_str("trust store is empty: load at least one CA certificate")
            }
            Self::BadTrustAnchor { index, detail } => {
                write!(
                    f,
                    "CA certificate #{index} cannot be a trust anchor: {detail}"
                )
            }
            Self::BadCrl { index, detail } => write!(f, "CRL #{index} is invalid: {detail}"),
            Self::CrlIssuerUnknown { index, issuer } => write!(
                f,
                "CRL #{index} is issued by {issuer:?}, which is not a certificate of the CA \
                 bundle (a CRL of an intermediate CA needs that intermediate in the bundle)"
            ),
            Self::CrlBadSignature {
                index,
                issuer,
                detail,
            } => write!(
                f,
                "CRL #{index}: signature does not verify with the key of its issuer {issuer:?} \
                 in the CA bundle: {detail}"
            ),
            Self::CrlIssuerNotCrlSigner { index, issuer } => write!(
                f,
                "CRL #{index} is issued by {issuer:?}, whose CA certificate in the CA bundle \
                 lacks the cRLSign key usage: that CA may not sign CRLs"
            ),
            Self::CrlWithoutClientAuth => f.write_str(
                "CRLs need client authentication: give a client CA bundle (the CRLs check \
                 client certificates)",
            ),
            Self::NothingEnabled { what } => write!(f, "narrowing left no {what} enabled"),
            Self::InvalidAlpn => f.write_str("ALPN protocol names must be 1 to 255 bytes"),
            Self::InvalidServerName { name } => write!(f, "invalid server name {name:?}"),
            Self::DuplicateServerName { name } => {
                write!(f, "server name {name:?} has two policies")
            }
            Self::InvalidIdentityRule { detail } => write!(f, "invalid identity rule: {detail}"),
            Self::BadTicketKeys { detail } => write!(f, "invalid ticket keys: {detail}"),
            Self::File { path, error } => write!(f, "{path}: {error}"),
            Self::Io { path, detail } => write!(f, "{path}: {detail}"),
            Self::Tls { detail } => write!(f, "TLS configuration refused: {detail}"),
        }
    }
}

impl core::error::Error for ConfigError {}

impl ConfigError {
    /// The same CRL error, for CRL `index` of a list.
    pub(crate) fn at_crl_index(self, index: usize) -> Self {
        match self {
            Self::BadCrl { detail, .. } => Self::BadCrl { index, detail },
            Self::CrlIssuerUnknown { issuer, .. } => Self::CrlIssuerUnknown { index, issuer },
            Self::CrlIssuerNotCrlSigner { issuer, .. } => {
                Self::CrlIssuerNotCrlSigner { index, issuer }
            }
            Self::CrlBadSignature { issuer, detail, .. } => Self::CrlBadSignature {
                index,
                issuer,
                detail,
            },
            other => other,
        }
    }

    /// Attach the file this error came from.
    pub fn in_file(self, path: impl Into<String>) -> Self {
        Self::File {
            path: path.into(),
            error: Box::new(self),
        }
    }
}

/// Something a caller should log, but that does not stop the policy from working.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// The own certificate expires within the configured warning window.
    CertificateExpiresSoon {
        /// Its `notAfter`.
        not_after: Time,
        /// Time left at the check.
        remaining: Duration,
    },
    /// A CRL is past its `nextUpdate`. Without grace every certificate it covers is refused
    /// ([`Reason::CrlExpired`]); within the grace it is still used.
    CrlExpired {
        /// Its name in [`crate::Revocation::names`], or else its issuer.
        crl: String,
        /// Its `nextUpdate`.
        next_update: Time,
        /// The configured grace ([`crate::Revocation::grace`]); zero: fail closed.
        grace: Duration,
    },
    /// A CRL reaches its `nextUpdate` within the warning window
    /// ([`crate::Revocation::warning`]).
    CrlExpiresSoon {
        /// Its name in [`crate::Revocation::names`], or else its issuer.
        crl: String,
        /// Its `nextUpdate`.
        next_update: Time,
        /// Time left at the check.
        remaining: Duration,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CertificateExpiresSoon {
                not_after,
                remaining,
            } => write!(
                f,
                "certificate expires in {} hours (not after {not_after})",
                remaining.as_secs() / 3600
            ),
            Self::CrlExpired {
                crl,
                next_update,
                grace,
            } if grace.is_zero() => write!(
                f,
                "CRL {crl} has expired (next update was due {next_update}): every certificate \
                 it covers is refused until a fresh CRL is loaded"
            ),
            Self::CrlExpired {
                crl,
                next_update,
                grace,
            } => write!(
                f,
                "CRL {crl} has expired (next update was due {next_update}): still used for \
                 {} s of grace after that, then every certificate it covers is refused",
                grace.as_secs()
            ),
            Self::CrlExpiresSoon {
                crl,
                next_update,
                remaining,
            } => write!(
                f,
                "CRL {crl} expires in {} minutes (next update {next_update}): publish a fresh \
                 CRL before then or every certificate it covers is refused",
                remaining.as_secs() / 60
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_codes_round_trip_and_name() {
        for (alert, code, name) in ALERT_TABLE {
            assert_eq!(alert.code(), *code);
            assert_eq!(Alert::from_code(*code), *alert);
            assert_eq!(alert.name(), *name);
        }
        assert_eq!(Alert::from_code(200), Alert::Other(200));
        assert_eq!(Alert::Other(200).code(), 200);
    }

    #[test]
    fn every_failure_has_a_distinct_label_and_index() {
        for (i, f) in Failure::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
            assert_eq!(
                Failure::ALL
                    .iter()
                    .filter(|g| g.label() == f.label())
                    .count(),
                1
            );
        }
    }
}
