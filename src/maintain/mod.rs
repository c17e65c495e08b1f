//! Maintenance tasks that run beside the hot path: gc, verify, doctor, the set-up of a
//! cache shared by a group, and the import of the old Python client's images (migrate).
//! Each reaches the cache only through [`crate::cache::Cache`].

pub mod doctor;
pub mod gc;
pub mod group;
#[cfg(feature = "migrate")]
pub mod migrate;
pub mod shared;
pub mod verify;
