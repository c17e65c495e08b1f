//! Maintenance tasks that run beside the hot path: gc, verify, doctor, the set-up of a
//! cache shared by a group, and the import of the old Python client's images (migrate).
//! Each reaches the cache only through [`crate::cache::Cache`].

use std::sync::Arc;

/// A progress hook of a maintenance task: told `(done, total)` as it advances (what is
/// counted is the task's: bytes hashed for verify, files removed for gc); returning false
/// asks the task to stop (each task says what stopping leaves).
#[derive(Clone)]
pub struct Told(pub Arc<dyn Fn(u64, u64) -> bool + Send + Sync>);

impl std::fmt::Debug for Told {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Told(..)")
    }
}

pub mod doctor;
pub mod gc;
pub mod group;
#[cfg(feature = "migrate")]
pub mod migrate;
pub mod shared;
pub mod verify;
