//! Tiers: read-only caches that a site fills elsewhere and publishes (CVMFS, a read-only
//! NFS export, a read-only bind mount), looked in after the writable cache.
//!
//! # Lookup order, in one place
//!
//! [`Caches`] is the list of caches a lookup looks in, in order: the caller's private
//! cache inside a shared cache (when the caller has one, see `private.rs`), then the
//! writable cache (the shared one, or the user's own), then each tier as configured
//! (`tiers`, `$SREGISTRY_TIERS`, `--tier`). The first that has the name answers, with
//! whatever it answers (a path, or its own error: a missing or damaged file of a name it
//! holds is its answer, never a reason to hand out another cache's image of that name);
//! only "no such name" passes the question on, and when no cache has the name the
//! writable cache's "not found" is the answer. So a private name shadows the same name in
//! the shared cache, the writable cache's a tier's, and an earlier tier a later one.
//! `list` shows the first of each name, or with `all` every one, the shadowed marked.
//! Every reader of a name goes through it: `get`, `inspect`, `list`, `get REMOTE`, and the
//! Python package's `get`, `list`, `inspect`.
//!
//! A change to a name (`rm`, `tag`, `pin`, `unpin`, `push`, `export`) acts in the cache
//! that holds it ([`Caches::holder`]): the private cache or the writable one; a name only
//! a tier holds is refused naming the tier ([`Caches::refuse_in_tier`]).
//!
//! A tier never holds a private image: `tier publish` copies the names of its source
//! cache's own index, never `private/` (each private cache has an index of its own), so
//! the privacy of `private.rs` holds for tiers with nothing more to check.
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
//! hashes (`src/maintain/verify.rs`, `verify --tiers`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{Cache, CacheError, Entry, Removed, Revealed};
use crate::format::reference::Reference;

/// The configured `tiers` that are not there (`lstat` finds nothing): a lookup goes on
/// without each, as an empty tier, and its caller warns of it ([`MissingTier`]), since a
/// node whose mount is missing should still answer from its writable cache, but say so.
pub fn missing_tiers(tiers: &[PathBuf]) -> impl Iterator<Item = &Path> {
    tiers
        .iter()
        .filter(|t| {
            std::fs::symlink_metadata(t).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        })
        .map(PathBuf::as_path)
}

/// The warning about a tier that is not there ([`missing_tiers`]), as the command line
/// and the Python package give it.
pub struct MissingTier<'a>(pub &'a Path);

impl std::fmt::Display for MissingTier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the tier `{}` does not exist (is its filesystem mounted on this node?); looking without it",
            self.0.display()
        )
    }
}

/// One place a lookup looks in.
#[derive(Clone, Debug)]
enum Place<'a> {
    /// The caller's private cache inside the writable (shared) cache.
    Private(Box<Cache>),
    /// The writable cache, open already.
    Writable(&'a Cache),
    /// A tier, opened by each lookup that reaches it ([`Cache::open_tier`]).
    Tier(PathBuf),
}

/// The caches a lookup looks in, in order: the caller's private cache (if any), the
/// writable cache, then each tier.
#[derive(Clone, Debug)]
pub struct Caches<'a> {
    places: Vec<Place<'a>>,
    /// Index of the writable cache in `places`.
    writable: usize,
}

/// A name as `list` shows it: its entry (`Entry::tier` and `Entry::private` say where it
/// is), and whether a cache looked in earlier has the same name (shown only by `list
/// --all`).
#[derive(Clone, Debug)]
pub struct Listed {
    pub entry: Entry,
    pub shadowed: bool,
}

impl<'a> Caches<'a> {
    /// The caller's private cache inside `writable` (for a shared cache, one `lstat`; for
    /// one that is not shared, no system call), `writable`, then the tiers at `tiers`, in
    /// order. Fails when the caller's private cache is there but not the caller's own.
    pub fn new(writable: &'a Cache, tiers: &[PathBuf]) -> Result<Caches<'a>, CacheError> {
        let mut places = Vec::with_capacity(2 + tiers.len());
        if let Some(p) = writable.own_private()? {
            places.push(Place::Private(Box::new(p)));
        }
        let at = places.len();
        places.push(Place::Writable(writable));
        places.extend(tiers.iter().cloned().map(Place::Tier));
        Ok(Caches {
            places,
            writable: at,
        })
    }

    /// The writable cache: where every change to a name it holds, and every pull, goes.
    pub fn writable(&self) -> &'a Cache {
        match self.places[self.writable] {
            Place::Writable(c) => c,
            _ => unreachable!("`writable` indexes the writable cache"),
        }
    }

    /// The caller's private cache, if the caller has one.
    pub fn private(&self) -> Option<&Cache> {
        self.places.iter().find_map(|p| match p {
            Place::Private(c) => Some(&**c),
            _ => None,
        })
    }

    /// The tiers, as configured, in order.
    pub fn tier_paths(&self) -> impl Iterator<Item = &Path> {
        self.places.iter().filter_map(|p| match p {
            Place::Tier(t) => Some(t.as_path()),
            _ => None,
        })
    }

    /// Ask `f` of each cache in order, opening a tier only when the lookup reaches it,
    /// until one answers `Some`.
    pub fn find<T, E: From<CacheError>>(
        &self,
        mut f: impl FnMut(&Cache) -> Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        for place in &self.places {
            let answer = match place {
                Place::Private(c) => f(c)?,
                Place::Writable(c) => f(c)?,
                Place::Tier(t) => f(&Cache::open_tier(t)?)?,
            };
            if answer.is_some() {
                return Ok(answer);
            }
        }
        Ok(None)
    }

    /// Ask `f` of each cache in order; the first answer that is not "no such name" wins.
    /// When none has the name, the writable cache's answer.
    pub fn first<T>(&self, f: impl Fn(&Cache) -> Result<T, CacheError>) -> Result<T, CacheError> {
        let mut missing = None;
        for (i, place) in self.places.iter().enumerate() {
            let answer = match place {
                Place::Private(c) => f(c),
                Place::Writable(c) => f(c),
                Place::Tier(t) => f(&Cache::open_tier(t)?),
            };
            match answer {
                Err(e @ CacheError::NotFound { .. }) => {
                    if i == self.writable {
                        missing = Some(e);
                    }
                }
                other => return other,
            }
        }
        Err(self.looked_in_tiers(missing.expect("the writable cache is looked in")))
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

    /// The cache a change to `r` acts in: the caller's private cache when it holds the
    /// name, else the writable cache (whose refusal of a name only a tier holds
    /// [`Caches::refuse_in_tier`] turns into [`CacheError::InTier`]).
    pub fn holder(&self, r: &Reference) -> &Cache {
        match self.private() {
            Some(p) if p.holds(r) => p,
            _ => self.writable(),
        }
    }

    /// The cache whose copy of `r` a command that only reads it uses (`push`, `export`):
    /// the first in the lookup order that has the name, a tier's opened read-only; the
    /// writable cache when none has it (its "no such image" is the answer).
    pub fn reader(&self, r: &Reference) -> Result<Cache, CacheError> {
        let bare = r.without_digest();
        for place in &self.places {
            let c = match place {
                Place::Private(c) => (**c).clone(),
                Place::Writable(c) => (*c).clone(),
                Place::Tier(t) => Cache::open_tier(t)?,
            };
            if c.holds(&bare) {
                return Ok(c);
            }
        }
        Ok(self.writable().clone())
    }

    /// `refs` split by the cache that holds each ([`Caches::holder`]): the caller's private
    /// cache's, then the writable cache's.
    pub fn split_private(&self, refs: &[Reference]) -> (Vec<Reference>, Vec<Reference>) {
        let private = self.private();
        refs.iter()
            .cloned()
            .partition(|r| private.is_some_and(|p| std::ptr::eq(self.holder(r), p)))
    }

    /// [`Cache::remove`] of each name in the cache that holds it ([`Caches::holder`]): the
    /// caller's private cache's names first, then the writable cache's; a name only a tier
    /// holds is refused naming the tier. Each cache's removal is all or nothing, as
    /// [`Cache::remove`] is. A removed name that a cache looked in later still has (the
    /// copy removed shadowed it) is in [`Removed::revealed`]: `get` now answers it from
    /// there, and the caller is told so.
    pub fn remove(&self, refs: &[Reference], keep_blob: bool) -> Result<Removed, CacheError> {
        let (mine, rest) = self.split_private(refs);
        let mut removed = Removed::default();
        for (c, refs) in [(self.private(), mine), (Some(self.writable()), rest)] {
            if let Some(c) = c
                && !refs.is_empty()
            {
                let r = c
                    .remove(&refs, keep_blob)
                    .map_err(|e| self.refuse_in_tier(e))?;
                removed.names.extend(r.names);
                removed.blobs.extend(r.blobs);
                removed.bytes_freed += r.bytes_freed;
            }
        }
        if self.places.len() > 1 {
            removed.revealed = self.revealed(&removed.names);
        }
        Ok(removed)
    }

    /// Which of the just removed `names` a cache still answers, and which cache: a lookup
    /// in the one order, so the answer is what `get` now hands out. A cache that cannot
    /// be read is left out (the removal is done; `get` reports it).
    fn revealed(&self, names: &[String]) -> Vec<Revealed> {
        names
            .iter()
            .filter_map(|n| {
                let r = Reference::parse(n).ok()?;
                let e = self.entry(&r).ok()?;
                Some(Revealed {
                    name: n.clone(),
                    tier: e.tier,
                })
            })
            .collect()
    }

    /// [`Cache::list`] of every cache, sorted by name, each name from the first cache
    /// that has it; with `all`, also the names earlier caches shadow (after the one that
    /// answers, marked).
    pub fn list(&self, pattern: Option<&str>, all: bool) -> Result<Vec<Listed>, CacheError> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for place in &self.places {
            let entries = match place {
                Place::Private(c) => c.list(pattern)?,
                Place::Writable(c) => c.list(pattern)?,
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
        let CacheError::NotFound { name, cache, .. } = e else {
            return e;
        };
        let not_found = |name, cache| {
            self.looked_in_tiers(CacheError::NotFound {
                name,
                cache,
                tiers: Vec::new(),
            })
        };
        let Ok(r) = Reference::parse(&name) else {
            return not_found(name, cache);
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
        not_found(name, cache)
    }

    /// The writable cache's "no image" `e` saying that the tiers were looked in too.
    fn looked_in_tiers(&self, e: CacheError) -> CacheError {
        match e {
            CacheError::NotFound { name, cache, .. } => CacheError::NotFound {
                name,
                cache,
                tiers: self.tier_paths().map(Path::to_path_buf).collect(),
            },
            other => other,
        }
    }
}

impl Cache {
    /// Whether the index has the name `r` (whatever its file's state); false when the
    /// index cannot be read.
    fn holds(&self, r: &Reference) -> bool {
        self.exists() && self.entry(&r.without_digest()).is_ok()
    }
}
