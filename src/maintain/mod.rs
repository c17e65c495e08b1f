//! Maintenance tasks that run beside the hot path: gc, verify, doctor, and the set-up of a
//! cache shared by a group. Each reaches the cache only through [`crate::cache::Cache`].

pub mod doctor;
pub mod gc;
pub mod group;
pub mod shared;
pub mod verify;
