//! An mTLS handshake between a client and a server session in memory: prints the verified
//! peer identity each side sees and how long full and resumed handshakes take.
//!
//! Run: `cargo run --release -p onerecord-tls --example mtls_handshake`

use std::time::{Duration, Instant};

use onerecord_tls::{
    ClientPolicy, Event, IdentityRule, PeerIdentity, ServerPolicy, Session, Time, TrustStore,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Drive both sessions until neither has anything to say. Returns what each side saw.
fn handshake(
    server: &mut Session,
    client: &mut Session,
    now: Time,
) -> Res<(Option<PeerIdentity>, Option<PeerIdentity>)> {
    let (mut seen_by_server, mut seen_by_client) = (None, None);
    for _ in 0..16 {
        client.process(now, |e| {
            if let Event::Established(p) = e {
                seen_by_client = Some(p.clone());
            }
        })?;
        let n = server.receive(client.transmit());
        client.transmitted(n);
        server.process(now, |e| {
            if let Event::Established(p) = e {
                seen_by_server = Some(p.clone());
            }
        })?;
        let m = client.receive(server.transmit());
        server.transmitted(m);
        if n == 0 && m == 0 && client.is_established() && server.is_established() {
            break;
        }
    }
    Ok((seen_by_server, seen_by_client))
}

fn main() -> Res<()> {
    let now = Time::now();

    // A throwaway PKI: a CA, a `localhost` server certificate, and a ONE Record client
    // certificate (CN = company ID, URI SAN = ONE Record ID).
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ONE Record Demo CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let server_key = KeyPair::generate()?;
    let server_cert =
        CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&server_key, &ca)?;
    let client_key = KeyPair::generate()?;
    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "acme-cargo");
    client_params.subject_alt_names.push(SanType::URI(
        "https://onerecord.example/logistics-agents/acme-cargo".try_into()?,
    ));
    let client_cert = client_params.signed_by(&client_key, &ca)?;
    let trust = TrustStore::from_pem(ca.pem().as_bytes())?;
    let key = |k: &KeyPair| onerecord_tls::PrivateKey::Pkcs8(k.serialize_der().into());

    let server_policy = ServerPolicy::builder(vec![server_cert.der().clone()], key(&server_key))
        .require_client_auth(trust.clone())
        .allow(IdentityRule::UriPrefix("https://onerecord.example/".into()))
        .build(now)?
        .into_set();
    let client_policy = ClientPolicy::builder(trust)
        .client_cert(vec![client_cert.der().clone()], key(&client_key))
        .build(now)?;

    let mut server = Session::server(&server_policy, now);
    let mut client = Session::client(&client_policy, "localhost", now)?;
    let (by_server, by_client) = handshake(&mut server, &mut client, now)?;
    let peer = by_server.ok_or("server saw no established event")?;
    let leaf = peer.leaf.as_ref().ok_or("no client certificate")?;
    println!(
        "mTLS handshake complete ({} {}, {:?})",
        peer.version, peer.suite, peer.handshake
    );
    println!("server sees client:");
    println!("  subject      {}", leaf.subject);
    println!("  company ID   {}", peer.common_name().unwrap_or("-"));
    println!("  ONE Record   {}", peer.uris().join(", "));
    println!("  issuer       {}", leaf.issuer);
    println!("  serial       {}", leaf.serial_hex());
    println!("  valid until  {} (unix)", leaf.not_after.as_unix_secs());
    println!("  SPKI sha256  {}", leaf.spki_sha256);
    let server_seen = by_client.ok_or("client saw no established event")?;
    println!(
        "client sees server: {} ({:?})",
        server_seen
            .leaf
            .as_ref()
            .map_or("-", |l| l.subject.as_str()),
        server_seen.group
    );

    // Application data both ways.
    client.send(b"GET /logistics-objects/1 HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let n = server.receive(client.transmit());
    client.transmitted(n);
    let mut request = Vec::new();
    server.process(now, |e| {
        if let Event::Data(d) = e {
            request.extend_from_slice(d);
        }
    })?;
    println!(
        "server received {} request bytes: {:?}",
        request.len(),
        String::from_utf8_lossy(&request[..33])
    );

    // Timings: full and resumed mTLS handshakes, median of 200 each.
    let time = |resume: bool| -> Res<Duration> {
        let mut samples = Vec::new();
        for _ in 0..200 {
            let policy = if resume {
                client_policy.clone()
            } else {
                client_policy
                    .to_builder()
                    .session_cache(Some(onerecord_tls::ClientSessionCache::new(1)))
                    .build(now)?
            };
            if resume {
                let mut s = Session::server(&server_policy, now);
                let mut c = Session::client(&policy, "localhost", now)?;
                handshake(&mut s, &mut c, now)?;
            }
            let start = Instant::now();
            let mut s = Session::server(&server_policy, now);
            let mut c = Session::client(&policy, "localhost", now)?;
            let (p, _) = handshake(&mut s, &mut c, now)?;
            samples.push(start.elapsed());
            assert_eq!(p.map(|p| p.resumed()), Some(resume));
        }
        samples.sort();
        Ok(samples[samples.len() / 2])
    };
    let full = time(false)?;
    let resumed = time(true)?;
    println!("median full mTLS handshake (client + server CPU, in memory): {full:?}");
    println!("median resumed mTLS handshake (client + server CPU, in memory): {resumed:?}");
    Ok(())
}
