//! One in-flight operation per volume, for the agent's CSI services and the controller alike. A
//! call takes a [`VolumeGuard`] for its volume id before touching anything; a second call for the
//! same id while the first runs gets [`VolumeBusy`] at once (each crate maps it to gRPC `Aborted`,
//! which the CO retries, as the CSI spec asks). The guard releases the id when dropped, so an
//! early return or a panic never leaves a volume locked. Different volumes never wait on each
//! other.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

/// The set of volume ids with an operation in flight; cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct VolumeLocks {
    busy: Arc<Mutex<HashSet<String>>>,
}

/// Another operation on this volume is in flight.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an operation on volume {0:?} is already in progress")]
pub struct VolumeBusy(pub String);

/// Holds one volume id until dropped.
#[derive(Debug)]
#[must_use = "the volume is unlocked as soon as the guard is dropped"]
pub struct VolumeGuard {
    id: String,
    busy: Arc<Mutex<HashSet<String>>>,
}

impl VolumeLocks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `id` for the caller, or fails at once when it is already taken.
    pub fn try_lock(&self, id: &str) -> Result<VolumeGuard, VolumeBusy> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if !busy.insert(id.to_owned()) {
            return Err(VolumeBusy(id.to_owned()));
        }
        Ok(VolumeGuard {
            id: id.to_owned(),
            busy: Arc::clone(&self.busy),
        })
    }

    /// How many volumes are locked now.
    pub fn in_flight(&self) -> usize {
        self.busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl VolumeGuard {
    /// The volume id this guard holds.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_caller_is_refused_until_the_first_drops() {
        let locks = VolumeLocks::new();
        let first = locks.try_lock("pvc-1").unwrap();
        assert_eq!(first.id(), "pvc-1");
        assert_eq!(
            locks.try_lock("pvc-1").unwrap_err(),
            VolumeBusy("pvc-1".into())
        );
        let other = locks.try_lock("pvc-2").unwrap();
        assert_eq!(locks.in_flight(), 2);
        drop(first);
        let again = locks.try_lock("pvc-1").unwrap();
        assert_eq!(locks.in_flight(), 2);
        drop((again, other));
        assert_eq!(locks.in_flight(), 0);
    }

    #[test]
    fn a_panicking_holder_still_releases_the_volume() {
        let locks = VolumeLocks::new();
        let clone = locks.clone();
        let joined = std::thread::spawn(move || {
            let _guard = clone.try_lock("pvc-x").unwrap();
            panic!("handler failed");
        })
        .join();
        assert!(joined.is_err());
        assert!(locks.try_lock("pvc-x").is_ok());
    }

    #[test]
    fn concurrent_callers_get_exactly_one_guard() {
        let locks = VolumeLocks::new();
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let locks = locks.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    let got = locks.try_lock("pvc-c");
                    // Hold the winner's guard until everyone has tried.
                    barrier.wait();
                    got.is_ok()
                })
            })
            .collect();
        let winners = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|won| *won)
            .count();
        assert_eq!(winners, 1);
    }
}
