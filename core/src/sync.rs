//! The one lock used for shared state (ticket keys, session caches): `std`'s mutex when
//! available, a spin lock on bare metal. Critical sections are a few map operations.

#[cfg(feature = "std")]
pub(crate) struct Mutex<T>(std::sync::Mutex<T>);

#[cfg(feature = "std")]
impl<T> Mutex<T> {
    pub(crate) const fn new(v: T) -> Self {
        Self(std::sync::Mutex::new(v))
    }

    /// Lock. A panic while holding the lock cannot leave these structures inconsistent
    /// (every update is a single map operation), so poisoning is ignored.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(not(feature = "std"))]
pub(crate) struct Mutex<T>(spin::Mutex<T>);

#[cfg(not(feature = "std"))]
impl<T> Mutex<T> {
    pub(crate) const fn new(v: T) -> Self {
        Self(spin::Mutex::new(v))
    }

    pub(crate) fn lock(&self) -> spin::MutexGuard<'_, T> {
        self.0.lock()
    }
}

impl<T> core::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Mutex")
    }
}
