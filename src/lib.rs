//! sregistry: a content-addressed container-image cache that a whole HPC cluster can share.
//!
//! Data flows in one direction: format, then cache, then convert, remote and maintain,
//! then the CLI and the Python package; each layer uses only those below it. The drawing
//! of the layers is in `docs/architecture.md` (the one drawing; keep it there).
//!
//! * `format` holds the pure formats: [`format::reference`] parses what users type
//!   (`lab/tool:1.2`) into a [`Reference`] (a name never becomes a filesystem path);
//!   [`format::digest`] is the BLAKE3 [`Digest`] that names content.
//! * [`cache::Cache`] is the one door: ingest (a writer that hashes while it writes,
//!   committed under the lock), naming, removal under the exclusive lock, last use,
//!   quarantine and pull locks. Its index (redb, names), its store (blobs, read-only,
//!   written through `tmp/` and renamed into place complete), the use markers and the
//!   lock files are private to it.
//! * [`remote`] pulls and pushes through the cache's ingest; [`maintain`] runs gc,
//!   verify, doctor, the shared-cache set-up and migrate through the cache's API.
//! * [`error`] is a leaf: every public error type answers `kind()` with an [`ErrorKind`],
//!   which the command line maps to its exit code and the Python package to its class.
//!
//! The binary (`src/main.rs`, `src/cli/`, behind the default `cli` feature) parses
//! arguments, prints, and maps errors to exit codes. `docs/architecture.md` says what each
//! module promises and which lock it holds.

pub mod cache;
pub mod convert;
pub mod error;
pub(crate) mod fork;
pub mod format;
pub mod maintain;
pub mod remote;
pub mod settings;
pub(crate) mod testhook;

pub use cache::Cache;
pub use error::ErrorKind;
pub use format::digest::Digest;
pub use format::reference::Reference;
