//! A handler that answers later: each line the peer sends is looked up on another thread (a
//! stand-in for a database or a call to another service); the handler returns at once and
//! writes the answer when that thread wakes it. The part between the `README` markers is the
//! README's "library in one screen".
//!
//!     cargo run -p onerecord-tls-mio --example answer_later -- server.pem server.key
//!     openssl s_client -connect 127.0.0.1:8443 -quiet     # type lines, get answers

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use onerecord_tls::{ServerPolicy, Time, pki};
use onerecord_tls_mio::{
    Backend, Handler, Limits, Listener, Mode, Peer, Reply, ServerConfig, Service,
};

// README-BEGIN
/// Makes a [`Lookup`] handler for every verified peer.
pub struct LookupService;

impl Service for LookupService {
    fn accept(&self, peer: &Peer<'_>) -> Option<Box<dyn Handler>> {
        let who = peer
            .identity
            .common_name()
            .unwrap_or("anonymous")
            .to_string();
        Some(Box::new(Lookup {
            who,
            line: Vec::new(),
            done: Arc::new(Mutex::new(VecDeque::new())),
        }))
    }
}

/// Answers each line with its length, computed on another thread.
pub struct Lookup {
    who: String,
    line: Vec<u8>,
    /// Answers the lookup threads finished, not yet written.
    done: Arc<Mutex<VecDeque<String>>>,
}

impl Handler for Lookup {
    fn on_data(&mut self, data: &[u8], reply: &mut Reply) {
        self.line.extend_from_slice(data);
        while let Some(nl) = self.line.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.line.drain(..=nl).collect();
            let (done, waker, who) = (self.done.clone(), reply.waker(), self.who.clone());
            // Nothing is written now: the answer comes when the thread wakes us.
            std::thread::spawn(move || {
                let answer = format!("{who}: {} bytes\n", line.len() - 1);
                done.lock().unwrap().push_back(answer);
                waker.wake();
            });
        }
    }

    fn on_wake(&mut self, reply: &mut Reply) {
        while let Some(answer) = self.done.lock().unwrap().pop_front() {
            reply.write(answer.as_bytes());
        }
    }

    fn on_closed(&mut self) {
        // The connection is gone: answers still on their way are dropped with `done`.
    }
}
// README-END

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(cert), Some(key)) = (args.get(1), args.get(2)) else {
        return Err("usage: answer_later CERT.pem KEY.pem".into());
    };
    let policy = ServerPolicy::builder(
        pki::certificates_from_file(cert)?,
        pki::private_key_from_file(key)?,
    )
    .build(Time::now())?;
    let server = onerecord_tls_mio::start(ServerConfig {
        listeners: vec![Listener {
            addr: "127.0.0.1:8443".parse()?,
            mode: Mode::Terminate {
                policies: policy.into_set(),
                backend: Backend::Service(Arc::new(LookupService)),
            },
        }],
        workers: 1,
        limits: Limits::default(),
        reuse_port: false,
    })?;
    println!("listening on {:?}", server.local_addrs());
    server.join();
    Ok(())
}
