//! Tiers: read-only caches that a site fills elsewhere and publishes (CVMFS, a read-only
//! NFS export, a read-only bind mount), looked in after the writable cache.
//!
//! # Lookup order, in one place
//!
//! [`Caches`] is the list of caches a lookup looks in, in order: the writable cache first,
//! then each tier as configured (`tiers`, `$SREGISTRY_TIERS`, `--tier`). The first that has
//! the name answers, with whatever it answers (a path, or its own error: a missing or
//! damaged file of a name it holds is its answer, never a reason to hand out another
//! cache's image of that name); only "no such name" passes the question on. So a name in
//! the writable cache shadows the same name in a tier, and an earlier tier a later one.
//! `list` shows the first of each name, or with `all` every one, the shadowed marked.
//! Another cache to look in (a private one) is one more place in this list.
//!
//! # A tier is never written
//!
//! A tier is published whole and never changed in place (see `publish.rs`), so a reader
//! needs no lock to exclude a writer: its handle ([`Cache::open_tier`]) opens
//! `v1/index.redb` read-only without taking `index.lock` (redb's own file locks are not
//! used by this crate's backend either), records no use (no marker, no `last_use`), makes
//! no directory and holds no writer lock. Its root is resolved once per handle
//! (`canonicalize`), so a handle reads the index and the blobs of one published version,
//! and the paths it hands out name that version's directory, which stays while a job uses
//! it. Writes that would land in a tier are refused: `rm`, `tag`, `pin`, `unpin` of a
//! name only a tier holds is [`CacheError::InTier`] ([`Caches::refuse_in_tier`]); every
//! write through a tier's handle is `IndexError::TierWrite`.
//!
//! A tier's files are checked as the writable cache's are (there, a regular file, of its
//! recorded size); the record of the file its commit put in place does not apply to a
//! copy (`BlobRecord::placed` names another `blobs/`), so a tier is judged by `verify`'s
//! hashes ([`crate::maintain::verify`], `verify --tiers`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{Cache, CacheError, Entry};
use crate::format::reference::Reference;

/// One place a lookup looks in.
#[derive(Clone, Debug)]
enum Place<'a> {
    /// A cache open already: the writable one.
    Open(&'a Cache),
    /// A tier, opened by each lookup that reaches it ([`Cache::open_tier`]).
    Tier(PathBuf),
}

/// The caches a lookup looks in, in order: the writable cache, then each tier.
#[derive(Clone, Debug)]
pub struct Caches<'a> {
    places: Vec<Place<'a>>,
}

/// A name as `list` shows it: its entry (`Entry::tier` says where it is), and whether a
/// cache looked in earlier has the same name (shown only by `list --all`).
#[derive(Clone, Debug)]
pub struct Listed {
    pub entry: Entry,
    pub shadowed: bool,
}

impl<'a> Caches<'a> {
    /// `writable`, then the tiers at `tiers`, in order.
    pub fn new(writable: &'a Cache, tiers: &[PathBuf]) -> Caches<'a> {
        let mut places = vec![Place::Open(writable)];
        places.extend(tiers.iter().cloned().map(Place::Tier));
        Caches { places }
    }

    /// The writable cache: where every change goes.
    pub fn writable(&self) -> &'a Cache {
        match self.places[0] {
            Place::Open(c) => c,
            Place::Tier(_) => unreachable!("the writable cache comes first"),
        }
    }

    /// The tiers, as configured, in order.
    pub fn tier_paths(&self) -> impl Iterator<Item = &Path> {
        self.places.iter().filter_map(|p| match p {
            Place::Tier(t) => Some(t.as_path()),
            Place::Open(_) => None,
        })
    }

    /// Ask `f` of each cache in order; the first answer that is not "no such name" wins.
    /// When none has the name, the writable cache's answer.
    pub fn first<T>(&self, f: impl Fn(&Cache) -> Result<T, CacheError>) -> Result<T, CacheError> {
        let mut missing = None;
        for place in &self.places {
            let answer = match place {
                Place::Open(c) => f(c),
                Place::Tier(t) => f(&Cache::open_tier(t)?),
            };
            match answer {
                Err(e @ CacheError::NotFound { .. }) => {
                    missing.get_or_insert(e);
                }
                other => return other,
            }
        }
        Err(missing.expect("the writable cache is looked in"))
    }

    /// [`Cache::get`] in the first cache that has the name.
    pub fn get(&self, r: &Reference) -> Result<PathBuf, CacheError> {
        self.first(|c| c.get(r))
    }

    /// [`Cache::get_verified`] in the first cache that has the name.
    pub fn get_verified(&self, r: &Reference) -> Result<PathBuf, CacheError> {
        self.first(|c| c.get_verified(r))
    }

    /// [`Cache::entry`] in the first cache that has the name.
    pub fn entry(&self, r: &Reference) -> Result<Entry, CacheError> {
        self.first(|c| c.entry(r))
    }

    /// [`Cache::list`] of every cache, sorted by name, each name from the first cache
    /// that has it; with `all`, also the names earlier caches shadow (after the one that
    /// answers, marked).
    pub fn list(&self, pattern: Option<&str>, all: bool) -> Result<Vec<Listed>, CacheError> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for place in &self.places {
            let entries = match place {
                Place::Open(c) => c.list(pattern)?,
                Place::Tier(t) => Cache::open_tier(t)?.list(pattern)?,
            };
            for entry in entries {
                let shadowed = !seen.insert(entry.name.clone());
                if all || !shadowed {
                    out.push(Listed { entry, shadowed });
                }
            }
        }
        // Stable: a name's copies stay in lookup order.
        out.sort_by(|a, b| a.entry.name.cmp(&b.entry.name));
        Ok(out)
    }

    /// What a change in the writable cache failed with, `e`, as the user should read it:
    /// a name the writable cache does not have but a tier does is [`CacheError::InTier`]
    /// (sregistry never changes a tier), not "no such image".
    pub fn refuse_in_tier(&self, e: CacheError) -> CacheError {
        let CacheError::NotFound { name, cache } = e else {
            return e;
        };
        let Ok(r) = Reference::parse(&name) else {
            return CacheError::NotFound { name, cache };
        };
        for tier in self.tier_paths() {
            if Cache::open_tier(tier).is_ok_and(|c| c.entry(&r).is_ok()) {
                return CacheError::InTier {
                    name,
                    tier: tier.to_path_buf(),
                    cache,
                };
            }
        }
        CacheError::NotFound { name, cache }
    }
}
