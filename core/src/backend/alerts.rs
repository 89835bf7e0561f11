//! Which alert a failure sends, in one place: rustls errors → [`Reason`] and the alert rustls
//! queues for them, the alerts the engine sends itself, and the alert actually on the wire
//! (read back from a plaintext record, or noted by the record encrypter, see `alert_spy`).

use rustls::{CertificateError, PeerIncompatible, PeerMisbehaved, ProtocolVersion};

use super::alert_spy;
use crate::error::{Alert, Reason};
use crate::time::Time;

/// `alert` as sent on a connection of `version`.
///
/// rustls answers a missing client certificate with `certificate_required` (116) in TLS 1.2
/// too, a code TLS 1.2 does not define; RFC 5246 7.4.6 prescribes `handshake_failure`, which
/// TLS 1.2 peers such as OpenSSL print meaningfully. This is the one place that rule lives.
pub(super) fn as_sent(alert: Alert, version: Option<ProtocolVersion>) -> Alert {
    if alert == Alert::CertificateRequired && version == Some(ProtocolVersion::TLSv1_2) {
        Alert::HandshakeFailure
    } else {
        alert
    }
}

/// The alert in `rec`, if it is a plaintext alert record (an encrypted one is named by the
/// record layer, see [`encrypted_alert`]); rewritten in place by [`as_sent`].
pub(super) fn read_back(rec: &mut [u8], version: Option<ProtocolVersion>) -> Option<Alert> {
    match rec {
        [0x15, _, _, 0, 2, _level, code] => {
            let alert = as_sent(Alert::from_code(*code), version);
            *code = alert.code();
            Some(alert)
        }
        _ => None,
    }
}

/// The fatal alert the record layer encrypted last on this thread, clearing it (std only).
pub(super) fn encrypted_alert() -> Option<Alert> {
    alert_spy::take_encrypted_alert().map(Alert::from_code)
}

/// The alert for an error that rustls returns without queueing one (its handshake deframer
/// returns these with `?`, past the code that alerts for every other malformed message).
pub(super) fn unalerted(e: &rustls::Error) -> Option<Alert> {
    match e {
        rustls::Error::InvalidMessage(_) => Some(Alert::DecodeError),
        rustls::Error::PeerMisbehaved(
            PeerMisbehaved::MessageInterleavedWithHandshakeMessage
            | PeerMisbehaved::TooManyEmptyFragments,
        ) => Some(Alert::UnexpectedMessage),
        _ => None,
    }
}

fn time_of(t: &pki_types::UnixTime) -> Time {
    Time::from(*t)
}

/// The reason for a rustls error, and the alert rustls queues for it (when the alert goes out
/// encrypted and the record layer could not note it, this mapping names it).
pub(super) fn classify(
    e: &rustls::Error,
    version: Option<ProtocolVersion>,
) -> (Reason, Option<Alert>) {
    use rustls::Error as E;
    let alert = |a: rustls::AlertDescription| Some(Alert::from_code(u8::from(a)));
    match e {
        E::AlertReceived(a) => (Reason::PeerAlert(Alert::from_code(u8::from(*a))), None),
        E::InvalidCertificate(ce) => {
            let a = alert(rustls::AlertDescription::from(ce.clone()));
            let reason = match ce {
                CertificateError::Expired => Reason::CertificateExpired {
                    not_after: None,
                    now: None,
                },
                CertificateError::ExpiredContext { time, not_after } => {
                    Reason::CertificateExpired {
                        not_after: Some(time_of(not_after)),
                        now: Some(time_of(time)),
                    }
                }
                CertificateError::NotValidYet => Reason::CertificateNotYetValid {
                    not_before: None,
                    now: None,
                },
                CertificateError::NotValidYetContext { time, not_before } => {
                    Reason::CertificateNotYetValid {
                        not_before: Some(time_of(not_before)),
                        now: Some(time_of(time)),
                    }
                }
                CertificateError::UnknownIssuer => Reason::UnknownIssuer,
                CertificateError::Revoked => Reason::Revoked,
                CertificateError::UnknownRevocationStatus => Reason::RevocationStatusUnknown,
                CertificateError::ExpiredRevocationList => Reason::CrlExpired {
                    crl: None,
                    next_update: None,
                },
                CertificateError::ExpiredRevocationListContext { next_update, .. } => {
                    Reason::CrlExpired {
                        crl: None,
                        next_update: Some(time_of(next_update)),
                    }
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => Reason::NameMismatch,
                CertificateError::ApplicationVerificationFailure => Reason::IdentityDenied,
                _ => Reason::BadCertificate,
            };
            (reason, a)
        }
        E::NoCertificatesPresented => (
            Reason::NoPeerCertificate,
            Some(as_sent(Alert::CertificateRequired, version)),
        ),
        E::PeerIncompatible(pi) => match pi {
            PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig => (
                Reason::ProtocolVersion {
                    highest_offered: None,
                },
                Some(Alert::ProtocolVersion),
            ),
            _ => (Reason::NoCommonParameters, Some(Alert::HandshakeFailure)),
        },
        E::NoApplicationProtocol => (
            Reason::NoApplicationProtocol,
            Some(Alert::NoApplicationProtocol),
        ),
        E::InvalidMessage(_) => (Reason::ProtocolViolation, Some(Alert::DecodeError)),
        E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            (Reason::ProtocolViolation, Some(Alert::UnexpectedMessage))
        }
        E::DecryptError => (Reason::ProtocolViolation, Some(Alert::BadRecordMac)),
        E::PeerSentOversizedRecord => (Reason::ProtocolViolation, Some(Alert::RecordOverflow)),
        E::PeerMisbehaved(pm) => (
            Reason::ProtocolViolation,
            match pm {
                PeerMisbehaved::TooManyEmptyFragments
                | PeerMisbehaved::TooManyWarningAlertsReceived
                | PeerMisbehaved::TooManyKeyUpdateRequests => Some(Alert::UnexpectedMessage),
                _ => Some(Alert::IllegalParameter),
            },
        ),
        E::UnsupportedNameType => (Reason::NoCommonParameters, Some(Alert::HandshakeFailure)),
        _ => (Reason::Internal, Some(Alert::InternalError)),
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;
    use core::time::Duration;

    use pki_types::UnixTime;
    use rustls::{AlertDescription, ContentType, Error as E, HandshakeType, InvalidMessage};

    use super::*;

    const TLS12: Option<ProtocolVersion> = Some(ProtocolVersion::TLSv1_2);
    const TLS13: Option<ProtocolVersion> = Some(ProtocolVersion::TLSv1_3);

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    fn t(secs: u64) -> Option<Time> {
        Some(Time::from(at(secs)))
    }

    #[test]
    fn every_mapped_rustls_error_has_its_reason_and_alert() {
        use Alert as A;
        use CertificateError as C;
        use Reason as R;
        let pv = R::ProtocolVersion {
            highest_offered: None,
        };
        let table: vec::Vec<(E, R, Option<Alert>)> = vec![
            (
                E::AlertReceived(AlertDescription::UnknownCA),
                R::PeerAlert(A::UnknownCa),
                None,
            ),
            (
                E::InvalidCertificate(C::Expired),
                R::CertificateExpired {
                    not_after: None,
                    now: None,
                },
                Some(A::CertificateExpired),
            ),
            (
                E::InvalidCertificate(C::ExpiredContext {
                    time: at(20),
                    not_after: at(10),
                }),
                R::CertificateExpired {
                    not_after: t(10),
                    now: t(20),
                },
                Some(A::CertificateExpired),
            ),
            (
                E::InvalidCertificate(C::NotValidYet),
                R::CertificateNotYetValid {
                    not_before: None,
                    now: None,
                },
                Some(A::CertificateExpired),
            ),
            (
                E::InvalidCertificate(C::NotValidYetContext {
                    time: at(10),
                    not_before: at(20),
                }),
                R::CertificateNotYetValid {
                    not_before: t(20),
                    now: t(10),
                },
                Some(A::CertificateExpired),
            ),
            (
                E::InvalidCertificate(C::UnknownIssuer),
                R::UnknownIssuer,
                Some(A::UnknownCa),
            ),
            (
                E::InvalidCertificate(C::Revoked),
                R::Revoked,
                Some(A::CertificateRevoked),
            ),
            (
                E::InvalidCertificate(C::UnknownRevocationStatus),
                R::RevocationStatusUnknown,
                Some(A::UnknownCa),
            ),
            (
                E::InvalidCertificate(C::ExpiredRevocationList),
                R::CrlExpired {
                    crl: None,
                    next_update: None,
                },
                Some(A::UnknownCa),
            ),
            (
                E::InvalidCertificate(C::ExpiredRevocationListContext {
                    time: at(20),
                    next_update: at(10),
                }),
                R::CrlExpired {
                    crl: None,
                    next_update: t(10),
                },
                Some(A::UnknownCa),
            ),
            (
                E::InvalidCertificate(C::NotValidForName),
                R::NameMismatch,
                Some(A::BadCertificate),
            ),
            (
                E::InvalidCertificate(C::ApplicationVerificationFailure),
                R::IdentityDenied,
                Some(A::AccessDenied),
            ),
            (
                E::InvalidCertificate(C::BadEncoding),
                R::BadCertificate,
                Some(A::BadCertificate),
            ),
            (
                E::InvalidCertificate(C::BadSignature),
                R::BadCertificate,
                Some(A::DecryptError),
            ),
            (
                E::NoCertificatesPresented,
                R::NoPeerCertificate,
                Some(A::CertificateRequired),
            ),
            (
                E::PeerIncompatible(PeerIncompatible::SupportedVersionsExtensionRequired),
                pv.clone(),
                Some(A::ProtocolVersion),
            ),
            (
                E::PeerIncompatible(PeerIncompatible::Tls12NotOffered),
                pv.clone(),
                Some(A::ProtocolVersion),
            ),
            (
                E::PeerIncompatible(PeerIncompatible::Tls12NotOfferedOrEnabled),
                pv.clone(),
                Some(A::ProtocolVersion),
            ),
            (
                E::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13),
                pv.clone(),
                Some(A::ProtocolVersion),
            ),
            (
                E::PeerIncompatible(PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig),
                pv,
                Some(A::ProtocolVersion),
            ),
            (
                E::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon),
                R::NoCommonParameters,
                Some(A::HandshakeFailure),
            ),
            (
                E::NoApplicationProtocol,
                R::NoApplicationProtocol,
                Some(A::NoApplicationProtocol),
            ),
            (
                E::InvalidMessage(InvalidMessage::MissingData("x")),
                R::ProtocolViolation,
                Some(A::DecodeError),
            ),
            (
                E::InappropriateMessage {
                    expect_types: vec![ContentType::Handshake],
                    got_type: ContentType::ApplicationData,
                },
                R::ProtocolViolation,
                Some(A::UnexpectedMessage),
            ),
            (
                E::InappropriateHandshakeMessage {
                    expect_types: vec![HandshakeType::Finished],
                    got_type: HandshakeType::ClientHello,
                },
                R::ProtocolViolation,
                Some(A::UnexpectedMessage),
            ),
            (E::DecryptError, R::ProtocolViolation, Some(A::BadRecordMac)),
            (
                E::PeerSentOversizedRecord,
                R::ProtocolViolation,
                Some(A::RecordOverflow),
            ),
            (
                E::PeerMisbehaved(PeerMisbehaved::TooManyEmptyFragments),
                R::ProtocolViolation,
                Some(A::UnexpectedMessage),
            ),
            (
                E::PeerMisbehaved(PeerMisbehaved::TooManyWarningAlertsReceived),
                R::ProtocolViolation,
                Some(A::UnexpectedMessage),
            ),
            (
                E::PeerMisbehaved(PeerMisbehaved::TooManyKeyUpdateRequests),
                R::ProtocolViolation,
                Some(A::UnexpectedMessage),
            ),
            (
                E::PeerMisbehaved(PeerMisbehaved::MissingPskModesExtension),
                R::ProtocolViolation,
                Some(A::IllegalParameter),
            ),
            (
                E::UnsupportedNameType,
                R::NoCommonParameters,
                Some(A::HandshakeFailure),
            ),
            (E::EncryptError, R::Internal, Some(A::InternalError)),
            (
                E::FailedToGetRandomBytes,
                R::Internal,
                Some(A::InternalError),
            ),
        ];
        for (error, reason, alert) in table {
            assert_eq!(classify(&error, TLS13), (reason, alert), "{error:?}");
        }
    }

    #[test]
    fn a_missing_certificate_is_handshake_failure_in_tls12_only() {
        let (_, alert12) = classify(&E::NoCertificatesPresented, TLS12);
        let (_, alert13) = classify(&E::NoCertificatesPresented, TLS13);
        assert_eq!(alert12, Some(Alert::HandshakeFailure));
        assert_eq!(alert13, Some(Alert::CertificateRequired));

        let mut rec = [0x15, 3, 3, 0, 2, 2, Alert::CertificateRequired.code()];
        assert_eq!(read_back(&mut rec, TLS12), Some(Alert::HandshakeFailure));
        assert_eq!(rec[6], Alert::HandshakeFailure.code());
        let mut rec = [0x15, 3, 3, 0, 2, 2, Alert::CertificateRequired.code()];
        assert_eq!(read_back(&mut rec, TLS13), Some(Alert::CertificateRequired));
        assert_eq!(read_back(&mut [0x17, 3, 3, 0, 2, 2, 40], TLS13), None);
    }

    #[test]
    fn errors_rustls_does_not_alert_get_the_alert_of_their_siblings() {
        let table = [
            (
                E::InvalidMessage(InvalidMessage::HandshakePayloadTooLarge),
                Some(Alert::DecodeError),
            ),
            (
                E::PeerMisbehaved(PeerMisbehaved::MessageInterleavedWithHandshakeMessage),
                Some(Alert::UnexpectedMessage),
            ),
            (
                E::PeerMisbehaved(PeerMisbehaved::TooManyEmptyFragments),
                Some(Alert::UnexpectedMessage),
            ),
            (E::DecryptError, None),
        ];
        for (error, alert) in table {
            assert_eq!(unalerted(&error), alert, "{error:?}");
        }
    }
}
