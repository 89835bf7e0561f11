//! The in-memory client/server pair with virtual time: each side's output is delivered to
//! the other, at most [`Pair::chunk`] bytes at a time, so the byte stream can be split at any
//! position.

use onerecord_tls::{ClientPolicy, Error, Event, PeerIdentity, ServerPolicies, Session, Time};

use crate::pki::now;

/// One recorded event, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    /// Established with this identity.
    Established(Box<PeerIdentity>),
    /// Data received.
    Data(Vec<u8>),
    /// Peer sent close_notify.
    PeerClosed,
    /// Both closed.
    Closed,
}

fn record(events: &mut Vec<Ev>) -> impl FnMut(Event<'_>) + '_ {
    move |e| {
        events.push(match e {
            Event::Established(id) => Ev::Established(Box::new(id.clone())),
            Event::Data(d) => Ev::Data(d.to_vec()),
            Event::PeerClosed => Ev::PeerClosed,
            Event::Closed => Ev::Closed,
        })
    }
}

/// A client and a server session wired together in memory.
pub struct Pair {
    /// The client side.
    pub client: Session,
    /// The server side.
    pub server: Session,
    /// Virtual time of the client.
    pub client_now: Time,
    /// Virtual time of the server.
    pub server_now: Time,
    /// At most this many bytes move per delivery (fragmentation); `usize::MAX` for none.
    pub chunk: usize,
    /// Events seen by the client.
    pub client_events: Vec<Ev>,
    /// Events seen by the server.
    pub server_events: Vec<Ev>,
    /// First error of the client.
    pub client_error: Option<Error>,
    /// First error of the server.
    pub server_error: Option<Error>,
}

impl Pair {
    /// A new pair at [`now`], client connecting to `server_name`.
    pub fn new(server: &ServerPolicies, client: &ClientPolicy, server_name: &str) -> Self {
        Self {
            client: Session::client(client, server_name, now()).expect("client session"),
            server: Session::server(server, now()),
            client_now: now(),
            server_now: now(),
            chunk: usize::MAX,
            client_events: Vec::new(),
            server_events: Vec::new(),
            client_error: None,
            server_error: None,
        }
    }

    /// Move at most `chunk` bytes from one side's output to the other's input.
    fn deliver(from: &mut Session, to: &mut Session, chunk: usize) -> usize {
        let pending = from.transmit();
        if pending.is_empty() || to.is_terminal() {
            // A terminal receiver drops what arrives, like a closed socket.
            let n = pending.len();
            from.transmitted(n);
            return 0;
        }
        let n = to.receive(&pending[..pending.len().min(chunk)]);
        from.transmitted(n);
        n
    }

    /// One round: client processes, bytes to server, server processes, bytes to client.
    /// Returns the bytes moved.
    pub fn step(&mut self) -> usize {
        if self.client_error.is_none() {
            if let Err(e) = self
                .client
                .process(self.client_now, record(&mut self.client_events))
            {
                self.client_error = Some(e);
            }
        }
        let a = Self::deliver(&mut self.client, &mut self.server, self.chunk);
        if self.server_error.is_none() {
            if let Err(e) = self
                .server
                .process(self.server_now, record(&mut self.server_events))
            {
                self.server_error = Some(e);
            }
        }
        let b = Self::deliver(&mut self.server, &mut self.client, self.chunk);
        a + b
    }

    /// Run until nothing moves for two rounds (bounded).
    pub fn run(&mut self) -> &mut Self {
        let mut quiet = 0;
        for _ in 0..10_000 {
            if self.step() == 0 {
                quiet += 1;
                if quiet >= 2 {
                    break;
                }
            } else {
                quiet = 0;
            }
        }
        self
    }

    /// The identity the server saw, if established.
    pub fn server_saw(&self) -> Option<&PeerIdentity> {
        self.server.peer_identity()
    }

    /// The identity the client saw, if established.
    pub fn client_saw(&self) -> Option<&PeerIdentity> {
        self.client.peer_identity()
    }

    /// All data the server received, concatenated.
    pub fn server_received(&self) -> Vec<u8> {
        data_of(&self.server_events)
    }

    /// All data the client received, concatenated.
    pub fn client_received(&self) -> Vec<u8> {
        data_of(&self.client_events)
    }
}

fn data_of(events: &[Ev]) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| {
            if let Ev::Data(d) = e {
                Some(d.as_slice())
            } else {
                None
            }
        })
        .flatten()
        .copied()
        .collect()
}
