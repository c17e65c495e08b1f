//! Maintenance tasks that run beside the hot path: gc, verify, doctor, the set-up of a
//! cache shared by a group, and the import of the old Python client's images (migrate).
//! Each reaches the cache only through [`crate::cache::Cache`]. A task that reports how it
//! advances does so through the cache's one progress type, [`crate::cache::Progress`]
//! (what is counted is the task's: bytes hashed for verify, files removed for gc).

pub mod doctor;
pub mod gc;
pub mod group;
#[cfg(feature = "migrate")]
pub mod migrate;
pub mod shared;
pub mod verify;
