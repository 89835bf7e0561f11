//! Protocol vocabulary: TLS versions, cipher suites and key exchange groups, as a policy
//! names them and a session reports them. Plain data, no rustls type.

use core::fmt;

/// Protocol versions a policy enables. Nothing below TLS 1.2 exists here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 and TLS 1.2 (the ONE Record default).
    #[default]
    Tls13AndTls12,
    /// TLS 1.3 only.
    Tls13Only,
    /// TLS 1.2 only: for interoperability tests and for peers that mishandle TLS 1.3. Still
    /// within the ONE Record floor; prefer the default.
    Tls12Only,
}

impl Versions {
    /// `true` when `v` is enabled.
    pub fn enables(self, v: TlsVersion) -> bool {
        match self {
            Self::Tls13AndTls12 => true,
            Self::Tls13Only => v == TlsVersion::Tls13,
            Self::Tls12Only => v == TlsVersion::Tls12,
        }
    }
}

/// A negotiated protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    /// TLS 1.2
    Tls12,
    /// TLS 1.3
    Tls13,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tls12 => "TLSv1.2",
            Self::Tls13 => "TLSv1.3",
        })
    }
}

/// The cipher suites ONE Record allows: every TLS 1.3 suite, and TLS 1.2 ECDHE with AEAD.
/// The order of [`CipherSuite::ALL`] is the default preference (SHA-256 suites first: they
/// make handshakes measurably cheaper than AES-256-GCM-SHA384).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// TLS_AES_128_GCM_SHA256
    Tls13Aes128GcmSha256,
    /// TLS_CHACHA20_POLY1305_SHA256
    Tls13Chacha20Poly1305Sha256,
    /// TLS_AES_256_GCM_SHA384
    Tls13Aes256GcmSha384,
    /// TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    EcdheEcdsaAes128GcmSha256,
    /// TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    EcdheRsaAes128GcmSha256,
    /// TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    EcdheEcdsaChacha20Poly1305Sha256,
    /// TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    EcdheRsaChacha20Poly1305Sha256,
    /// TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    EcdheEcdsaAes256GcmSha384,
    /// TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
    EcdheRsaAes256GcmSha384,
}

impl CipherSuite {
    /// Every allowed suite, in default preference order.
    pub const ALL: [Self; 9] = [
        Self::Tls13Aes128GcmSha256,
        Self::Tls13Chacha20Poly1305Sha256,
        Self::Tls13Aes256GcmSha384,
        Self::EcdheEcdsaAes128GcmSha256,
        Self::EcdheRsaAes128GcmSha256,
        Self::EcdheEcdsaChacha20Poly1305Sha256,
        Self::EcdheRsaChacha20Poly1305Sha256,
        Self::EcdheEcdsaAes256GcmSha384,
        Self::EcdheRsaAes256GcmSha384,
    ];

    /// The IANA name, as OpenSSL's `-ciphersuites`/RFC names print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tls13Aes128GcmSha256 => "TLS_AES_128_GCM_SHA256",
            Self::Tls13Chacha20Poly1305Sha256 => "TLS_CHACHA20_POLY1305_SHA256",
            Self::Tls13Aes256GcmSha384 => "TLS_AES_256_GCM_SHA384",
            Self::EcdheEcdsaAes128GcmSha256 => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            Self::EcdheRsaAes128GcmSha256 => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            Self::EcdheEcdsaChacha20Poly1305Sha256 => {
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            }
            Self::EcdheRsaChacha20Poly1305Sha256 => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            Self::EcdheEcdsaAes256GcmSha384 => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            Self::EcdheRsaAes256GcmSha384 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        }
    }

    /// The suite's version.
    pub fn version(self) -> TlsVersion {
        match self {
            Self::Tls13Aes128GcmSha256
            | Self::Tls13Chacha20Poly1305Sha256
            | Self::Tls13Aes256GcmSha384 => TlsVersion::Tls13,
            _ => TlsVersion::Tls12,
        }
    }

    /// The suite with this IANA name (e.g. `TLS_AES_128_GCM_SHA256`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Key exchange groups ONE Record allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// X25519
    X25519,
    /// NIST P-256 (secp256r1)
    P256,
    /// NIST P-384 (secp384r1)
    P384,
}

impl Group {
    /// Every allowed group, in default preference order.
    pub const ALL: [Self; 3] = [Self::X25519, Self::P256, Self::P384];

    /// The IANA name.
    pub fn name(self) -> &'static str {
        match self {
            Self::X25519 => "x25519",
            Self::P256 => "secp256r1",
            Self::P384 => "secp384r1",
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
