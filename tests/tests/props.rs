//! Property tests: a valid handshake succeeds under arbitrary fragmentation; arbitrary bytes
//! to either side never panic and end in an error.

use std::sync::OnceLock;

use onerecord_tls::{ClientPolicy, ServerPolicies, ServerPolicy, Session, Versions};
use onerecord_tls_tests::{Ca, LeafSpec, Pair, now};
use proptest::prelude::*;

struct Policies {
    server: ServerPolicies,
    client13: ClientPolicy,
    client12: ClientPolicy,
}

fn policies() -> &'static Policies {
    static P: OnceLock<Policies> = OnceLock::new();
    P.get_or_init(|| {
        let ca = Ca::new("prop CA");
        let sid = ca.issue(&LeafSpec::server());
        let cid = ca.issue(&LeafSpec::client("acme"));
        let server = ServerPolicy::builder(sid.chain.clone(), sid.key())
            .require_client_auth(ca.trust())
            .build(now())
            .unwrap()
            .into_set();
        let client = |v| {
            ClientPolicy::builder(ca.trust())
                .client_cert(cid.chain.clone(), cid.key())
                .versions(v)
                .session_cache(None)
                .build(now())
                .unwrap()
        };
        Policies {
            server,
            client13: client(Versions::Tls13Only),
            client12: client(Versions::Tls12Only),
        }
    })
}

/// Drive the pair moving chunks whose sizes come from `cuts` (cycled).
fn run_fragmented(p: &mut Pair, cuts: &[usize]) {
    let mut quiet = 0;
    for i in 0..20_000 {
        p.chunk = cuts[i % cuts.len()];
        if p.step() == 0 {
            quiet += 1;
            if quiet > 2 {
                break;
            }
        } else {
            quiet = 0;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn handshake_succeeds_under_arbitrary_fragmentation(
        cuts in proptest::collection::vec(1usize..2000, 1..16),
        tls12 in any::<bool>(),
    ) {
        let pol = policies();
        let client = if tls12 { &pol.client12 } else { &pol.client13 };
        let mut p = Pair::new(&pol.server, client, "localhost");
        run_fragmented(&mut p, &cuts);
        prop_assert!(p.client.is_established(), "client: {:?}", p.client_error);
        prop_assert!(p.server.is_established(), "server: {:?}", p.server_error);
        p.client.send(b"ping").unwrap();
        run_fragmented(&mut p, &cuts);
        prop_assert_eq!(p.server_received(), b"ping".to_vec());
    }

    #[test]
    fn arbitrary_bytes_to_the_server_never_panic_and_end_in_an_error(
        input in proptest::collection::vec(any::<u8>(), 0..3000),
        tls_prefix in any::<bool>(),
    ) {
        let mut s = Session::server(&policies().server, now());
        let mut bytes = if tls_prefix { vec![0x16, 0x03, 0x01] } else { vec![] };
        bytes.extend_from_slice(&input);
        let mut offered = 0;
        let mut result = Ok(());
        while offered < bytes.len() && result.is_ok() {
            offered += s.receive(&bytes[offered..]);
            result = s.process(now(), |e| panic!("no event from garbage: {e:?}"));
        }
        if result.is_ok() {
            result = s.received_eof();
        }
        let err = result.unwrap_err();
        prop_assert!(s.is_terminal());
        prop_assert!(!err.to_string().is_empty());
    }

    #[test]
    fn arbitrary_bytes_to_the_client_never_panic_and_end_in_an_error(
        input in proptest::collection::vec(any::<u8>(), 0..3000),
        tls_prefix in any::<bool>(),
    ) {
        let mut c = Session::client(&policies().client13, "localhost", now()).unwrap();
        c.process(now(), |_| {}).unwrap();
        let hello_len = c.transmit().len();
        c.transmitted(hello_len);
        let mut bytes = if tls_prefix { vec![0x16, 0x03, 0x03] } else { vec![] };
        bytes.extend_from_slice(&input);
        let mut offered = 0;
        let mut result = Ok(());
        while offered < bytes.len() && result.is_ok() {
            offered += c.receive(&bytes[offered..]);
            result = c.process(now(), |e| panic!("no event from garbage: {e:?}"));
        }
        if result.is_ok() {
            result = c.received_eof();
        }
        prop_assert!(result.is_err());
        prop_assert!(c.is_terminal());
    }

    #[test]
    fn mutated_client_flight_never_panics_the_server(
        flip_at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
        truncate in any::<bool>(),
    ) {
        let pol = policies();
        let mut c = Session::client(&pol.client13, "localhost", now()).unwrap();
        c.process(now(), |_| {}).unwrap();
        let mut hello = c.transmit().to_vec();
        let i = flip_at.index(hello.len());
        if truncate {
            hello.truncate(i);
        } else {
            hello[i] ^= xor;
        }
        let mut s = Session::server(&pol.server, now());
        let _ = s.receive(&hello);
        let r = s.process(now(), |_| {});
        // Either the server answered (a mutated random or key share can still be a valid
        // hello), or it refused with a typed error; it never panicked or delivered data.
        if let Err(e) = r {
            prop_assert!(s.is_terminal());
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
