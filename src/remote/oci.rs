//! `oras://`: SIF images stored as ORAS artifacts, over the registry layer
//! (`registry.rs`: session, authentication, blob download and upload), which this
//! module shares with `docker://`.
//!
//! # The artifact
//!
//! What `apptainer push oras://` writes, and what this module reads and writes: an OCI image
//! manifest whose config has media type `application/vnd.sylabs.sif.config.v1+json` (an
//! empty JSON object) and whose one layer is the SIF file itself, media type
//! `application/vnd.sylabs.sif.layer.v1.sif`, with the file name in the
//! `org.opencontainers.image.title` annotation. The prototype layer type of Singularity
//! before 3.7 (`appliciation/vnd.sylabs.sif.layer.tar`, typo included) is accepted on pull.
//!
//! # Requests
//!
//! Manifests are fetched with an `Accept` header naming the OCI and Docker manifest types
//! (the registry answers 404 without it), at most 4 MiB, and checked against the digest
//! when pulled by digest. A layer whose digest is the one the name already holds from
//! this reference is not fetched again. The layer is fetched as a stream through the `Sink` (declared size
//! enforced, sha256 checked, BLAKE3 computed); a connection that drops mid-blob is resumed
//! with `Range` (the registry layer's `download`). Uploads (its `upload_blob`) are `POST` then `PUT <Location>&digest=` (a single-request
//! upload is answered `202` by some registries and stores nothing); a blob the registry
//! already has (`HEAD`) is not sent again.

use std::path::Path;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::auth::{self, Credentials};
use super::error::RemoteError;
use super::registry::{
    Body, INDEX_OCI, MANIFEST_DOCKER, MANIFEST_OCI, MAX_MANIFEST, Session, Validators, download,
    ok_or_status, pull_scope, push_scope, read_limited, upload_blob,
};
use super::sink::Sink;
use super::transport::Transport;
use super::types::{Fetched, Known, Pulled, RemoteOptions};
use crate::cache::{Cache, Entry};
use crate::format::digest::{sha256_hex, sha256_reader};

pub use super::registry::{Descriptor, OciRef};

pub(super) const SIF_CONFIG: &str = "application/vnd.sylabs.sif.config.v1+json";
pub const SIF_LAYER: &str = crate::format::sif::MEDIA_TYPE;
/// The prototype layer type of Singularity before 3.7 (sic).
pub const SIF_LAYER_PROTO: &str = "appliciation/vnd.sylabs.sif.layer.tar";
pub const TITLE: &str = "org.opencontainers.image.title";

/// An OCI image manifest (the fields this module uses).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// Parse a manifest body. Public so fuzzing can reach it.
pub fn parse_manifest(body: &[u8]) -> Result<Manifest, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("manifests").is_some() {
        return Err(
            "it is an index of several manifests (multi-platform); pull one of them by digest"
                .into(),
        );
    }
    let m: Manifest =
        serde_json::from_value(v).map_err(|e| format!("not an image manifest: {e}"))?;
    if m.schema_version != 2 {
        return Err(format!(
            "schemaVersion {} (only 2 is known)",
            m.schema_version
        ));
    }
    Ok(m)
}

/// The SIF layer of a manifest.
pub fn sif_layer(m: &Manifest) -> Result<&Descriptor, String> {
    let sifs: Vec<&Descriptor> = m
        .layers
        .iter()
        .filter(|l| l.media_type == SIF_LAYER || l.media_type == SIF_LAYER_PROTO)
        .collect();
    match sifs.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no layer of type {SIF_LAYER} (layers: {})",
            m.layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => Err("more than one SIF layer".into()),
    }
}

/// Fetch and check the manifest of `r`: (manifest, its digest, its bytes).
pub(super) async fn fetch_manifest(
    s: &mut Session<'_>,
    r: &OciRef,
) -> Result<(Manifest, String, Vec<u8>), RemoteError> {
    let url = s.url(&format!("/v2/{}/manifests/{}", r.repository, r.reference()));
    let client = s.client();
    let make = || {
        client.get(url.as_str()).header(
            ACCEPT,
            format!("{MANIFEST_OCI}, {MANIFEST_DOCKER}, {INDEX_OCI}"),
        )
    };
    let resp = s.send(&pull_scope(&r.repository), &url, &make).await?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(RemoteError::NotFound {
            host: r.host.clone(),
            what: format!("{}:{}", r.repository, r.reference()),
        });
    }
    let resp = ok_or_status(resp, &url).await?;
    let body = read_limited(resp, &url, MAX_MANIFEST).await?;
    let digest = sha256_hex(&body);
    if let Some(want) = &r.digest
        && *want != digest
    {
        return Err(RemoteError::DigestMismatch {
            url,
            expected: want.clone(),
            actual: digest,
        });
    }
    let m = parse_manifest(&body).map_err(|detail| RemoteError::NotSif {
        url: url.clone(),
        detail,
    })?;
    Ok((m, digest, body))
}

/// Download the SIF layer of `r` into `tmp/`, verified; nothing when the manifest names
/// the layer the cache already holds under this name (`known`).
pub(super) async fn pull(
    t: &Transport,
    cache: &Cache,
    r: &OciRef,
    opts: &RemoteOptions,
    known: Option<&Known>,
) -> Result<Pulled, RemoteError> {
    let creds = if opts.anonymous {
        None
    } else {
        auth::credentials_for(&r.host)?
    };
    let mut s = Session::new(t, &r.host, creds);
    let (m, _mdigest, _) = fetch_manifest(&mut s, r).await?;
    let layer = sif_layer(&m)
        .map_err(|detail| RemoteError::NotSif {
            url: s.url(&format!("/v2/{}/manifests/{}", r.repository, r.reference())),
            detail,
        })?
        .clone();
    if known.and_then(|k| k.remote_digest.as_deref()) == Some(layer.digest.as_str()) {
        return Ok(Pulled::Unchanged);
    }
    if let Some(e) = super::held_by_a_tier(opts, |e| {
        e.remote_digest.as_deref() == Some(layer.digest.as_str())
    })? {
        return Ok(Pulled::InTier(e));
    }
    let url = s.url(&format!("/v2/{}/blobs/{}", r.repository, layer.digest));
    let mut sink = Sink::new(cache, &url, Some(layer.size), &opts.limits)?;
    download(
        &mut s,
        &pull_scope(&r.repository),
        &url,
        &mut sink,
        opts,
        Validators::default(),
    )
    .await?;
    let (ingested, sha) = sink.finish(Some(layer.size), Some(&layer.digest))?;
    Ok(Pulled::Fresh(
        ingested,
        Fetched {
            media_type: Some(layer.media_type.clone()),
            remote_digest: Some(sha),
            ..Fetched::default()
        },
    ))
}

/// Upload a cached image as a SIF artifact; returns where it went and its sha256.
pub(super) async fn push(
    t: &Transport,
    file: &std::fs::File,
    entry: &Entry,
    r: &OciRef,
    opts: &RemoteOptions,
) -> Result<(String, Option<String>), RemoteError> {
    let creds = auth::credentials_for(&r.host)?;
    let mut s = Session::new(t, &r.host, creds);
    let scope = push_scope(&r.repository);
    let io_err = |source| RemoteError::Io {
        path: entry.path.clone(),
        source,
    };
    let size = file.metadata().map_err(io_err)?.len();
    let layer_digest = match &entry.remote_digest {
        Some(d) if d.starts_with("sha256:") => d.clone(),
        _ => {
            let mut f = super::transport::reopen(file).map_err(io_err)?;
            sha256_reader(&mut f).map_err(io_err)?
        }
    };
    let config = b"{}".to_vec();
    let config_digest = sha256_hex(&config);
    upload_blob(
        &mut s,
        &scope,
        &r.repository,
        &config_digest,
        Body::Bytes(config.clone()),
        opts,
    )
    .await?;
    upload_blob(
        &mut s,
        &scope,
        &r.repository,
        &layer_digest,
        Body::File(file, size),
        opts,
    )
    .await?;
    let title = entry
        .source
        .as_deref()
        .and_then(|src| Path::new(src.split(['?', '#']).next().unwrap_or(src)).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sif"))
        .unwrap_or_else(|| {
            format!(
                "{}.sif",
                entry
                    .name
                    .rsplit('/')
                    .next()
                    .unwrap_or("image")
                    .replace(':', "_")
            )
        });
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_OCI.into()),
        artifact_type: None,
        config: Descriptor {
            media_type: SIF_CONFIG.into(),
            digest: config_digest,
            size: config.len() as u64,
            annotations: None,
        },
        layers: vec![Descriptor {
            media_type: SIF_LAYER.into(),
            digest: layer_digest.clone(),
            size,
            annotations: Some([(TITLE.to_string(), title)].into_iter().collect()),
        }],
    };
    let body = serde_json::to_vec(&manifest).map_err(|e| RemoteError::Protocol {
        url: r.to_string(),
        detail: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
    let url = s.url(&format!("/v2/{}/manifests/{tag}", r.repository));
    let client = s.client();
    let make = || {
        client
            .put(url.as_str())
            .header(CONTENT_TYPE, MANIFEST_OCI)
            .body(body.clone())
    };
    let resp = s.send(&scope, &url, &make).await?;
    ok_or_status(resp, &url).await?;
    Ok((
        format!("oras://{}/{}:{tag}", r.host, r.repository),
        Some(layer_digest),
    ))
}

/// Tags of a repository (`host/repo`), or the catalog of a registry (`host`), every page
/// of it: a registry that answers with `Link: <...>; rel="next"` is asked for the next
/// page until it gives none.
pub(super) async fn search(
    t: &Transport,
    target: &str,
    _opts: &RemoteOptions,
) -> Result<Vec<String>, RemoteError> {
    let (host, repo) = match target.split_once('/') {
        Some((h, r)) if !r.is_empty() => (h, Some(r.trim_end_matches('/'))),
        Some((h, _)) => (h, None),
        None => (target, None),
    };
    if let Some(r) = repo
        && (r.contains(':') || r.contains('@'))
    {
        return Err(super::transport::bad_ref(
            &format!("oras://{target}"),
            "search takes oras://HOST or oras://HOST/REPOSITORY, without a tag or digest",
        ));
    }
    let creds = auth::credentials_for(host)?;
    let mut s = Session::new(t, host, creds);
    let (path, scope, field) = match repo {
        Some(r) => (format!("/v2/{r}/tags/list"), pull_scope(r), "tags"),
        None => (
            "/v2/_catalog".to_string(),
            "registry:catalog:*".to_string(),
            "repositories",
        ),
    };
    let mut url = s.url(&path);
    let client = t.client().clone();
    let mut out: Vec<String> = Vec::new();
    let mut seen_pages = std::collections::HashSet::new();
    loop {
        let resp = s.send(&scope, &url, &|| client.get(url.as_str())).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(RemoteError::NotFound {
                host: host.to_string(),
                what: repo.unwrap_or("catalog").to_string(),
            });
        }
        let resp = ok_or_status(resp, &url).await?;
        let next = next_page(&resp, &url);
        let body = read_limited(resp, &url, 16 << 20).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| RemoteError::Protocol {
                url: url.clone(),
                detail: e.to_string(),
                source: Some(Box::new(e)),
            })?;
        if let Some(a) = v[field].as_array() {
            out.extend(a.iter().filter_map(|x| x.as_str().map(str::to_string)));
        }
        seen_pages.insert(url.clone());
        match next {
            Some(n) if seen_pages.contains(&n) => {
                return Err(RemoteError::Protocol {
                    url: n,
                    detail: "the listing's next page is one already read (a pagination loop)"
                        .into(),
                    source: None,
                });
            }
            Some(n) => {
                t.check_url(&n)?;
                url = n;
            }
            None => break,
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The `rel="next"` target of a response's `Link` header, resolved against `url`.
fn next_page(resp: &Response, url: &str) -> Option<String> {
    let base = reqwest::Url::parse(url).ok()?;
    resp.headers()
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().split_once(';')?;
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            let is_next = params.split(';').any(|p| {
                p.trim()
                    .strip_prefix("rel=")
                    .is_some_and(|r| r.trim_matches('"').split(' ').any(|r| r == "next"))
            });
            is_next.then(|| base.join(target).ok().map(String::from))?
        })
}

/// Check credentials against `/v2/` (answering a challenge if there is one).
pub(super) async fn check_login(
    t: &Transport,
    host: &str,
    creds: &Credentials,
    _opts: &RemoteOptions,
) -> Result<(), RemoteError> {
    let mut s = Session::new(t, host, Some(creds.clone()));
    let url = s.url("/v2/");
    let client = t.client().clone();
    let resp = s.send("", &url, &|| client.get(url.as_str())).await?;
    ok_or_status(resp, &url).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oras_references_parse_tags_digests_and_defaults() {
        let r = OciRef::parse("127.0.0.1:5000/lab/tool:1.2").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.reference()),
            ("127.0.0.1:5000", "lab/tool", "1.2")
        );
        let r = OciRef::parse("reg.example.org/tool").unwrap();
        assert_eq!(r.reference(), "latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = OciRef::parse(&format!("reg.example.org/tool@{d}")).unwrap();
        assert_eq!(r.reference(), d);
        assert_eq!(
            r.local_name(),
            format!("reg.example.org/tool:sha256-{}", "a".repeat(64))
        );
        for bad in [
            "host",
            "host/",
            "host/Tool",
            "host/tool@md5:00",
            "host/../x",
            "ho st/x",
        ] {
            assert!(OciRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifests_with_one_sif_layer_are_accepted_and_indexes_refused() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.sylabs.sif.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},
            "layers":[{"mediaType":"application/vnd.sylabs.sif.layer.v1.sif","digest":"sha256:00","size":10,
            "annotations":{"org.opencontainers.image.title":"x.sif"}}]}"#;
        let m = parse_manifest(m).unwrap();
        assert_eq!(sif_layer(&m).unwrap().size, 10);
        assert!(
            parse_manifest(br#"{"schemaVersion":2,"manifests":[]}"#)
                .unwrap_err()
                .contains("index")
        );
        assert!(parse_manifest(b"not json").is_err());
        let docker = br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"b","size":1},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"c","size":1}]}"#;
        assert!(sif_layer(&parse_manifest(docker).unwrap()).is_err());
    }
}
