//! The index: which name points to which blob, in a redb database, with a journal of
//! names beside it that can rebuild it.
//!
//! # Protocol
//!
//! `v1/index.redb` is opened only while this process holds `v1/index.lock`
//! ([`crate::cache::lock`]):
//!
//! * **read**: the lock shared, the database opened read-only ([`redb::ReadOnlyDatabase`]);
//!   any number of processes on any number of nodes at once.
//! * **write**: the lock exclusive, then `index.redb` and `index.journal` opened and
//!   *fenced* (`lock::fence`: an exclusive lock on a byte far past their end, through the
//!   descriptor every write goes through), the database opened read-write, one write
//!   transaction, its changes appended to the journal, committed durably, the files
//!   closed, then the lock released. The fences make a writer whose lock an NFS server
//!   forgot in a restart fail with an I/O error (the Linux client refuses I/O through a
//!   descriptor whose lock was lost) instead of writing over the next writer's commit.
//!
//! redb's own file locks are not used ([`UnderOurLock`](backend::UnderOurLock)): our lock already gives readers
//! and the writer the exclusion they would, and on NFS each of their 18 or so lock calls
//! per open would be a round trip to the server. Our lock makes waits bounded and
//! announced where redb would refuse a second opener outright. Both holds last milliseconds: no
//! hashing, copying or downloading happens under the index lock, and no other lock is
//! waited for while it is held.
//!
//! After a crash of a writer, a read-only open fails with `RepairAborted`: the reader
//! then takes the exclusive lock, opens read-write (which repairs), and reads again.
//!
//! # Damage, and the journal that undoes it
//!
//! redb checks its pages, but some damaged pages (a zeroed page, flipped bytes, a cut
//! file) make it panic rather than return an error. Every call into redb is made here
//! under [`std::panic::catch_unwind`] (while it runs, [`panic_is_caught`] is true so the
//! binary's panic hook stays quiet); a panic, or an error redb calls corruption, becomes
//! [`IndexError::Damaged`], whose one-line message names the index and the fix. A reader
//! or writer that met damage refuses every later call.
//!
//! The fix is `sregistry doctor --repair-index` ([`Index::rebuild`]), which rebuilds the
//! names from `v1/index.journal` ([`journal`]):
//!
//! * **What it holds.** The first line is a snapshot of every blob record, name and pin
//!   at a sequence number; each later line is one write transaction that changed any of
//!   them (`last_use` is not journalled: it is a hint for gc, and a rebuild counts as a
//!   use of every name). Lines are JSON.
//! * **Writing.** Only under the exclusive index lock (so there is one appender, on NFS
//!   too). A transaction with changes takes the next sequence number, records it in
//!   `meta.journal_seq` in the same redb transaction, and appends its line *before* redb
//!   commits. The line is not flushed: the kernel writes it back within seconds, and a
//!   power loss before then leaves a journal behind the (durable) index, which the next
//!   writer notices and mends with a snapshot (below). So a flush would only shorten the
//!   window in which a power loss *and* page damage to the index together lose the last
//!   seconds of names; it would cost every `add` about a tenth of its time. If the
//!   commit fails, a `void` line for that number follows.
//! * **Checking.** Each writer reads the journal's last complete line when it opens the
//!   index and compares its number with `meta.journal_seq`: equal is in step; one ahead
//!   means the last writer died between its append and its commit (a `void` line is
//!   appended); behind, or unreadable, or missing means the journal lost its tail (or
//!   never existed: a cache older than the journal), and the writer replaces it with a
//!   snapshot of the index; two or more ahead means the index is older than its journal
//!   (restored from a copy, or deleted and created anew) and every writer refuses
//!   ([`IndexError::BehindJournal`]) until it is rebuilt. A missing `index.redb` beside a
//!   journal is refused the same way, by readers too, so no name is silently forgotten.
//! * **Compaction.** When the journal grows past four times its last snapshot (and 1 MiB),
//!   the next writer replaces it with a snapshot of the committed index: written to a
//!   temporary file with the cache's file mode, synced, renamed over, the directory synced.
//! * **Rebuild.** Under the exclusive lock: replay the snapshot and every transaction not
//!   void, move the damaged index aside (`index.redb.damaged-<unix time>`, never deleted),
//!   build a fresh index from the replayed state under a temporary name, rename it into
//!   place. Blob records the journal lacks are made from the blob files (size, time, a
//!   SIF's media type); names whose blob file is missing are kept and reported (as
//!   `verify` would). Every blob file no replayed name points at (and no named image
//!   lists as a part) is kept under a pinned name `recovered/<hex>:latest` and reported,
//!   except a writer's own (a second link: its staged file; or recorded only by a void
//!   line). Without a journal the rebuild starts from nothing but `blobs/`. When the
//!   result differs from what the journal replays, the journal is rewritten as a snapshot
//!   of it (a journal with unreadable lines is copied aside first).
//! * **Never an empty index beside images.** A missing `index.redb` is created afresh
//!   only when there is neither a journal nor a file with a single link in `blobs/`
//!   (an add or pull in flight holds a second one); otherwise every reader and writer
//!   refuses ([`IndexError::Missing`]) and points to the rebuild.
//!
//! One unflushed append (and a read of the journal's last line) per write transaction is
//! the journal's whole cost on the write path; `get` never touches it.
//!
//! # Several versions on one cache
//!
//! `meta` records `schema_version` (the newest schema that wrote the index), `read_compat`
//! (the oldest schema that can still read it safely) and `write_compat` (the oldest that
//! can still change it safely); the `about` table records which sregistry version brought
//! it to its schema. A build whose [`SCHEMA_VERSION`] is older than the index's reads only
//! if it is at least `read_compat` and writes only if it is at least `write_compat`, and
//! never migrates or restamps the index; otherwise it refuses with
//! [`IndexError::NeedsNewer`], naming the schema and the version the cache needs. Each
//! migration declares the compatibility its schema needs ([`Migration`](schema::Migration)): a change an
//! older reader would misread raises `read_compat`; one an older writer would undo or
//! defeat (a table an old gc does not know, whose blobs it would delete; the journal, which
//! an old writer would not keep) raises `write_compat`; anything else raises neither.
//!
//! # Tables (values are JSON, so fields can be added with defaults)
//!
//! | table       | key              | value                                   |
//! |-------------|------------------|-----------------------------------------|
//! | `refs`      | name (`ns/n:tag`) | [`RefRecord`]: digest, added, source, labels |
//! | `blobs`     | digest hex       | [`BlobRecord`]: size, added, media type, remote digest, parts |
//! | `blob_refs` | digest hex       | (multimap) every name pointing at it    |
//! | `last_use`  | name             | Unix seconds; written only when older than [`LAST_USE_RESOLUTION`] |
//! | `pins`      | name             | Unix seconds when pinned                |
//! | `meta`      | `schema_version`, `read_compat`, `write_compat`, `journal_seq`, `journal_base` | numbers |
//! | `about`     | `schema_written_by` | the sregistry version that migrated it to its schema |
//!
//! Migrations are an append-only list ([`MIGRATIONS`](schema::MIGRATIONS)); never remove
//! an entry from it.
//!
//! # Where each part lives
//!
//! `schema.rs` (tables, records, migrations, compatibility levels), `damage.rs` (the
//! panic guard and what counts as damage), `open.rs` ([`Index`]: the opens under the lock,
//! fences, a missing index refused or built), `read.rs` ([`IndexReader`]), `write.rs`
//! ([`IndexWriter`]: journal appends, checks and compaction), `rebuild.rs`
//! ([`Index::rebuild`], [`Index::journal_status`]), `journal.rs` (the journal's lines and
//! their replay), `backend.rs` (redb's file backend without its locks).

mod backend;
mod damage;
pub(crate) mod journal;
mod kept;
mod open;
mod read;
mod rebuild;
mod schema;
mod write;

pub use super::error::IndexError;
pub use damage::panic_is_caught;
pub(super) use open::Index;
pub(super) use read::IndexReader;
pub use read::{IndexStats, Named};
pub(super) use rebuild::OnDisk;
pub use rebuild::{JournalStatus, Rebuilt, Recovered, recovered_name};
pub(super) use schema::VERSION;
pub use schema::{
    BlobRecord, LAST_USE_RESOLUTION, PlacedFile, RefRecord, Retired, SCHEMA_VERSION, decode_blob,
    decode_ref, file_id,
};
pub(super) use write::IndexWriter;

#[cfg(test)]
mod tests;
