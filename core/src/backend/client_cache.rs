//! The client session store: what a client remembers to resume, as rustls stores it.

use alloc::collections::VecDeque;

use pki_types::ServerName;
use rustls::NamedGroup;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};

use crate::sync::Mutex;

/// What the client remembers about one server.
struct Entry {
    name: ServerName<'static>,
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

/// At most `capacity` servers, each with one TLS 1.2 session and up to `tickets_per_server`
/// TLS 1.3 tickets; the least recently stored server is evicted first.
pub(crate) struct ClientStore {
    entries: Mutex<VecDeque<Entry>>,
    capacity: usize,
    tickets_per_server: usize,
}

impl core::fmt::Debug for ClientStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientStore")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl ClientStore {
    pub(crate) fn new(capacity: usize, tickets_per_server: usize) -> Self {
        Self {
            entries: Mutex::new(VecDeque::new()),
            capacity,
            tickets_per_server,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Servers currently remembered.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Forget everything.
    pub(crate) fn clear(&self) {
        self.entries.lock().clear();
    }
}

impl ClientStore {
    /// Run `f` on the entry for `name`, creating it (and evicting the oldest) if needed;
    /// the entry moves to the most-recent end.
    fn with_entry<R>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        if self.capacity == 0 {
            return None;
        }
        let mut entries = self.entries.lock();
        let entry = match entries.iter().position(|e| e.name == *name) {
            Some(i) => entries.remove(i)?,
            None => Entry {
                name: name.to_owned(),
                kx_hint: None,
                tls12: None,
                tls13: Default::default(),
            },
        };
        entries.push_back(entry);
        while entries.len() > self.capacity {
            entries.pop_front();
        }
        entries.back_mut().map(f)
    }

    fn find<R>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let mut entries = self.entries.lock();
        entries.iter_mut().find(|e| e.name == *name).map(f)
    }
}

impl ClientSessionStore for ClientStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with_entry(&server_name, |e| e.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.find(server_name, |e| e.kx_hint).flatten()
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with_entry(&server_name, |e| e.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.find(server_name, |e| e.tls12.clone()).flatten()
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.find(server_name, |e| e.tls12 = None);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.with_entry(&server_name, |e| {
            if e.tls13.len() >= self.tickets_per_server {
                e.tls13.pop_front();
            }
            e.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        // Newest first: it has the longest remaining lifetime.
        self.find(server_name, |e| e.tls13.pop_back()).flatten()
    }
}
