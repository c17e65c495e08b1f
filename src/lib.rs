//! sregistry: a content-addressed container-image cache that a whole HPC cluster can share.
//!
//! Data flows in one direction, and each module uses only those below it:
//!
//! ```text
//! commands/ ─▶ cache (the one door) ─▶ index (redb, names) ─▶ store (blobs)
//!                                      │                        │
//!                                      └──── reference, digest, lock, clock, sif
//! ```
//!
//! * [`reference`] parses what users type (`lab/tool:1.2`) into a [`Reference`]; a name
//!   never becomes a filesystem path.
//! * [`store`] holds image files once each under their BLAKE3 [`Digest`], read-only,
//!   written through `tmp/` and renamed into place complete.
//! * [`index`] maps names to digests in a redb database that is opened only under the
//!   index lock of [`lock`].
//! * [`cache::Cache`] ties them together; library users and the commands go through it.
//!
//! The binary (`src/main.rs`) only parses arguments and maps errors to exit codes
//! ([`exit::ExitStatus`]).

pub mod cache;
pub mod format;
pub mod maintain;
pub mod remote;
pub(crate) mod testhook;

pub use cache::Cache;
pub use format::digest::Digest;
pub use format::reference::Reference;
