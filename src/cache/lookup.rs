//! [`Lookup`]: the caches a read of a name asks, in order, and the first that has the name
//! answers. Today: the caller's private cache inside a shared cache (when there is one,
//! see `private.rs`), then the cache itself. This is the one place that order is kept: a
//! cache that should be asked later (a read-only tier) is one more entry at the end.

use std::path::PathBuf;

use super::{Cache, CacheError, Entry};
use crate::format::reference::Reference;

/// Where an answer of a [`Lookup`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The caller's private cache inside a shared cache.
    Private,
    /// The cache given (`--cache`, `SREGISTRY_CACHE`, ...).
    Given,
}

/// The caches to look in, in order: the caller's private cache (if any), then the cache
/// given. Never empty; the last is the cache given, whose "not found" a lookup that finds
/// nothing reports.
#[derive(Clone, Debug)]
pub struct Lookup {
    caches: Vec<(Place, Cache)>,
}

impl Lookup {
    /// The lookup order for the caller on `cache`: for a cache that is not shared, the
    /// cache alone (no system call); for a shared one, one `lstat` more for the caller's
    /// private cache.
    pub fn of(cache: &Cache) -> Result<Lookup, CacheError> {
        let mut caches = Vec::with_capacity(2);
        if let Some(p) = cache.own_private()? {
            caches.push((Place::Private, p));
        }
        caches.push((Place::Given, cache.clone()));
        Ok(Lookup { caches })
    }

    /// The caches in order, each with where it is.
    pub fn caches(&self) -> impl Iterator<Item = (Place, &Cache)> {
        self.caches.iter().map(|(p, c)| (*p, c))
    }

    /// The caller's private cache, if the lookup has one.
    pub fn private(&self) -> Option<&Cache> {
        self.caches()
            .find(|(p, _)| *p == Place::Private)
            .map(|(_, c)| c)
    }

    /// The first cache that has `r` answers `ask`; a cache that does not have the name
    /// passes it on, any other failure is the answer (a name there with another digest
    /// than `r` gives, a damaged file: never a later cache's content for it). The last cache's answer stands.
    pub fn first<T>(
        &self,
        r: &Reference,
        ask: impl Fn(&Cache, &Reference) -> Result<T, CacheError>,
    ) -> Result<(Place, T), CacheError> {
        let (last, before) = self.caches.split_last().expect("a lookup is never empty");
        for (place, c) in before {
            match ask(c, r) {
                Err(CacheError::NotFound { .. }) => continue,
                other => return other.map(|t| (*place, t)),
            }
        }
        ask(&last.1, r).map(|t| (last.0, t))
    }

    /// [`Cache::get`] in the first cache that has the name.
    pub fn get(&self, r: &Reference) -> Result<PathBuf, CacheError> {
        self.first(r, Cache::get).map(|(_, p)| p)
    }

    /// [`Cache::get_verified`] in the first cache that has the name.
    pub fn get_verified(&self, r: &Reference) -> Result<PathBuf, CacheError> {
        self.first(r, Cache::get_verified).map(|(_, p)| p)
    }

    /// [`Cache::entry`] in the first cache that has the name.
    pub fn entry(&self, r: &Reference) -> Result<(Place, Entry), CacheError> {
        self.first(r, Cache::entry)
    }

    /// The cache that holds `r` (the first that has the name), else the cache given: the
    /// one a command that changes a name (`rm`, `tag`, `pin`) acts on.
    pub fn holder(&self, r: &Reference) -> &Cache {
        self.caches
            .iter()
            .find(|(_, c)| c.holds(r))
            .map_or(&self.caches[self.caches.len() - 1].1, |(_, c)| c)
    }

    /// Every name of every cache (or those matching `pattern`), each with where it is, in
    /// lookup order: a name an earlier cache has hides the same name in a later one.
    pub fn list(&self, pattern: Option<&str>) -> Result<Vec<(Place, Entry)>, CacheError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (place, c) in &self.caches {
            for e in c.list(pattern)? {
                if seen.insert(e.name.clone()) {
                    out.push((*place, e));
                }
            }
        }
        out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        Ok(out)
    }
}

impl Cache {
    /// Whether the index has the name `r` (whatever its file's state); false when the
    /// index cannot be read.
    fn holds(&self, r: &Reference) -> bool {
        self.exists() && self.entry(&r.without_digest()).is_ok()
    }
}
