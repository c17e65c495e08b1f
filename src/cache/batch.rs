//! Many names at once: one write transaction per batch instead of one per name (bench
//! fills, imports). The same rules as [`Cache::add`]: content complete in `blobs/` before
//! a name that refers to it is committed, a pinned name re-pointed only when the caller
//! says so.

use super::index::{BlobRecord, RefRecord};
use super::ingest::Ingested;
use super::{Cache, CacheError, Repoint, refuse_digest_on_target, refuse_repoint};
use crate::format::clock;
use crate::format::digest::Digest;
use crate::format::reference::Reference;

/// One name of [`Cache::add_batch`]: the name, the content it points to, and the source
/// to record.
pub struct BatchName {
    pub name: Reference,
    pub digest: Digest,
    pub source: String,
}

impl Cache {
    /// Put `content` in place and record it, then point `names` at their digests, `batch`
    /// names per write transaction (the content goes in the first one). A digest must be
    /// among `content` or already in the cache ([`CacheError::BlobMissing`] otherwise). A
    /// refusal stops at that name: the batches before it stay committed. Returns the
    /// number of transactions.
    pub fn add_batch(
        &self,
        content: Vec<Ingested>,
        names: impl IntoIterator<Item = BatchName>,
        batch: usize,
        repoint: Repoint,
    ) -> Result<u32, CacheError> {
        self.ensure_layout()?;
        let batch = batch.max(1);
        let now = clock::now();
        let mut content = content;
        let mut names = names.into_iter().peekable();
        let mut txns = 0;
        while names.peek().is_some() || !content.is_empty() {
            let mut w = self.index.write()?;
            for c in content.drain(..) {
                let (digest, size) = (c.digest(), c.size());
                c.staged.commit(&self.store)?;
                w.put_blob(
                    &digest,
                    &BlobRecord {
                        size,
                        added: now,
                        media_type: None,
                        remote_digest: None,
                        ..Default::default()
                    },
                )?;
            }
            for n in names.by_ref().take(batch) {
                refuse_digest_on_target(&n.name)?;
                let key = n.name.key();
                if w.get_blob(&n.digest)?.is_none() {
                    return Err(CacheError::BlobMissing {
                        path: self.store.blob_path(&n.digest),
                        name: key,
                    });
                }
                if repoint != Repoint::Force {
                    refuse_repoint(&key, &n.digest, repoint, w.get_ref(&key)?, || {
                        w.is_pinned(&key)
                    })?;
                }
                let record = RefRecord {
                    digest: n.digest,
                    added: now,
                    source: Some(n.source),
                    labels: Default::default(),
                };
                w.put_ref(&key, &record)?;
                w.set_last_use(&key, now)?;
            }
            w.commit()?;
            txns += 1;
        }
        Ok(txns)
    }
}
