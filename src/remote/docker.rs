//! `docker://` images: pulled once for the whole cluster, layers shared, converted to SIF.
//!
//! # References
//!
//! `docker://[HOST[:PORT]/]REPOSITORY[:TAG|@sha256:<hex>]`, resolved as Docker resolves
//! them: a first part with a `.` or a `:`, or `localhost`, is a registry host; otherwise
//! the image is on Docker Hub (`docker.io`, whose API is `registry-1.docker.io`), and a
//! one-part name is in `library/`. The default tag is `latest`. Plain HTTP only to
//! loopback or with `--insecure`, as for `oras://`.
//!
//! # What a pull does (under the per-pull lock of reference and platform)
//!
//! 1. Fetch the manifest (OCI or Docker v2 schema 2, at most 4 MiB, checked against the
//!    digest when pulled by digest). An OCI image index or a Docker manifest list is
//!    followed to the manifest of the platform asked for (`--platform os/arch[/variant]`,
//!    default the host's); that manifest is checked against the index's digest.
//! 2. If the name already holds a conversion of this very manifest whose SIF is in the
//!    cache, nothing more is fetched and the name keeps that SIF (`pull` of an unchanged
//!    tag downloads only the manifest), also when gc dropped the layers under size
//!    pressure; `pull --force` fetches and converts again, to the same bytes.
//! 3. The config is fetched; its `os`, `architecture` and `variant` must agree with the
//!    platform asked for (`--platform`, else the host's), also when an index's entry
//!    claimed that platform: otherwise the pull fails naming what the image is, before
//!    any layer is fetched. The name records the config's platform, the SIF header its
//!    architecture.
//! 4. The config and every layer are looked up in the cache by their sha256 (blobs that
//!    earlier pulls kept as parts of an image) and opened there; the others are
//!    downloaded through the verifying `Sink` (declared size enforced, sha256 checked, BLAKE3
//!    computed) into `tmp/`. Nothing is named yet.
//! 5. [`crate::convert::write_sif_watched`] merges the layers into one squashfs (owners and
//!    modes from the layers, whoever converts) inside a SIF in a `tmp/` scratch file,
//!    held to the free space the cache keeps (`SREGISTRY_MIN_FREE`, as downloads are):
//!    when the filesystem has no more room above it, `mksquashfs` is stopped, the scratch
//!    file removed, and the pull fails with [`RemoteError::NoSpaceConverting`]. The
//!    conversion is reproducible (the SIF's UUID comes from the manifest digest and the
//!    platform, its times from the config and the layers): the same manifest gives the
//!    same digest on every node and every run.
//! 6. [`Cache::commit_image`] names the SIF and records the new layers and config as its
//!    parts, in one transaction: gc keeps them while the name uses the image, and drops
//!    them first under size pressure. A failure or a kill before that leaves only `tmp/`
//!    files, which the cache removes (or gc after its grace period).
//!
//! The name records its source (`docker://HOST/REPOSITORY:TAG`), the manifest digest, the
//! platform, and the image's entrypoint, cmd, env, working directory, labels and layers
//! as labels (`org.sregistry.docker.*`), which `inspect` shows.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use serde::Deserialize;

use super::auth;
use super::error::RemoteError;
use super::registry::{
    self, Descriptor, INDEX_OCI, MANIFEST_DOCKER, MANIFEST_OCI, OciRef, Session, Validators,
};
use super::runtime;
use super::sink::Sink;
use super::transport::Transport;
use super::types::{PullOutcome, RemoteOptions};
use crate::cache::{Cache, Entry, Ingested, Part, Provenance};
use crate::format::digest::sha256_hex;
use crate::format::reference::Reference;

/// A Docker manifest list (the Docker name for an image index).
pub(super) const MANIFEST_LIST_DOCKER: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// The media type recorded for the SIF a conversion makes.
pub(super) const SIF_MEDIA_TYPE: &str = crate::format::sif::MEDIA_TYPE;
/// Docker Hub, as it is named in references, and where its API answers.
const HUB: &str = "docker.io";
const HUB_API: &str = "registry-1.docker.io";
/// The largest image config accepted.
const MAX_CONFIG: u64 = 16 << 20;
/// Label keys this module records with the name.
pub(super) const LABEL_MANIFEST: &str = "org.sregistry.docker.manifest";
pub const LABEL_PLATFORM: &str = "org.sregistry.docker.platform";

/// A parsed `docker://` reference (the part after the scheme).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerRef {
    /// The registry as named (`docker.io` for Docker Hub).
    pub host: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl DockerRef {
    /// Parse the part after `docker://`.
    pub(super) fn parse(s: &str) -> Result<DockerRef, String> {
        if s.is_empty() {
            return Err("expected docker://[HOST/]REPOSITORY[:TAG]".into());
        }
        let (first, rest) = match s.split_once('/') {
            Some((f, r)) => (f, Some(r)),
            None => (s, None),
        };
        let is_host = first.contains('.') || first.contains(':') || first == "localhost";
        let (host, path) = match rest {
            Some(r) if is_host => (first.to_ascii_lowercase(), r.to_string()),
            _ => (HUB.to_string(), s.to_string()),
        };
        let host = match host.as_str() {
            "index.docker.io" | "registry-1.docker.io" => HUB.to_string(),
            _ => host,
        };
        let path = if host == HUB && !path.split(['@', ':']).next().unwrap_or("").contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let r = OciRef::parse(&format!("{host}/{path}"))?;
        Ok(DockerRef {
            host: r.host,
            repository: r.repository,
            tag: r.tag,
            digest: r.digest,
        })
    }

    /// Where the registry's API answers.
    pub(super) fn api_host(&self) -> &str {
        if self.host == HUB {
            HUB_API
        } else {
            &self.host
        }
    }

    fn oci(&self) -> OciRef {
        OciRef {
            host: self.api_host().to_string(),
            repository: self.repository.clone(),
            tag: self.tag.clone(),
            digest: self.digest.clone(),
        }
    }

    /// The local name: `HOST/REPOSITORY:TAG` (`:sha256-<hex>` for a digest).
    pub(super) fn local_name(&self) -> String {
        self.as_named().local_name()
    }
}

impl DockerRef {
    /// The reference as an [`OciRef`] on the registry as named (`docker.io`, not its API
    /// host): what the name and the display show.
    fn as_named(&self) -> OciRef {
        OciRef {
            host: self.host.clone(),
            ..self.oci()
        }
    }
}

impl fmt::Display for DockerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_named().fmt(f)
    }
}

/// An image platform: `os/architecture[/variant]`, in the OCI image spec's (Go's) names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parse `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(format!(
                "platform `{s}` is not os/arch[/variant] (for example linux/amd64 or linux/arm64/v8)"
            )),
        }
    }

    /// The platform of this machine.
    pub(super) fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "riscv64" => ("riscv64", None),
            "s390x" => ("s390x", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// The platform in the form that names it: `arm64` without its default variant
    /// (`linux/arm64/v8` is `linux/arm64`), `arm` with its default one (`linux/arm` is
    /// `linux/arm/v7`), as Docker matches them.
    pub(super) fn canonical(&self) -> Platform {
        let variant = match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", Some("v8")) => None,
            ("arm", None) => Some("v7".to_string()),
            (_, v) => v.map(str::to_string),
        };
        Platform {
            variant,
            ..self.clone()
        }
    }

    /// Whether an index entry's platform is this one. A variant asked for must match
    /// (`arm64` without one matches `v8` or none, as Docker does).
    fn matches(&self, p: &IndexPlatform) -> bool {
        if p.os != self.os || p.architecture != self.architecture {
            return false;
        }
        let norm = |v: Option<&str>| match (self.architecture.as_str(), v) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v.map(str::to_string),
        };
        match &self.variant {
            None => {
                self.architecture != "arm64" || norm(p.variant.as_deref()).as_deref() == Some("v8")
            }
            Some(v) => norm(p.variant.as_deref()).as_deref() == Some(v.as_str()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The platform every earlier version pulled on x86 machines, whose images keep the
/// plain `HOST/REPOSITORY:TAG` name.
pub(super) const PLAIN_NAME_PLATFORM: &str = "linux/amd64";

/// The local name of `local` (`HOST/REPOSITORY:TAG`) for `platform`: as it is for
/// linux/amd64, else with the platform added to the tag (`:TAG-linux-arm64`,
/// `:TAG-linux-arm-v7`). Fixed for all nodes, whatever their own platform, so that a
/// cluster of x86 and ARM nodes keeps one image per platform and never re-points one
/// name between them.
pub(super) fn platform_name(local: &str, platform: &Platform) -> String {
    let p = platform.canonical();
    if p.to_string() == PLAIN_NAME_PLATFORM {
        return local.to_string();
    }
    format!("{local}-{}", p.to_string().replace('/', "-"))
}

#[derive(Debug, Deserialize)]
struct IndexPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: Option<String>,
    digest: String,
    size: u64,
    platform: Option<IndexPlatform>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// An image manifest resolved for one platform.
#[derive(Debug)]
pub(super) struct Resolved {
    /// The digest of the platform's image manifest.
    pub digest: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// What a layer's media type says about it: accepted, or why not.
fn check_layer(d: &Descriptor) -> Result<(), String> {
    let t = d.media_type.as_str();
    let known = [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
    ];
    if known.contains(&t) {
        return Ok(());
    }
    Err(format!(
        "layer `{}` has media type `{t}`, which is not a filesystem layer this converter reads",
        d.digest
    ))
}

/// What a Docker schema 1 manifest is told (it has no `config` and is signed: nothing
/// reads it as an image manifest).
const SCHEMA_1: &str = "it is a Docker schema 1 manifest (schemaVersion 1, deprecated since 2017), which sregistry does not read; push the image again with a current client (docker push, podman push or skopeo copy write schema 2 or OCI manifests), then pull it";

/// Parse an image manifest body (OCI or Docker v2 schema 2). Public for fuzzing.
pub fn parse_image_manifest(body: &[u8]) -> Result<(Descriptor, Vec<Descriptor>), String> {
    // The version first: a schema 1 manifest lacks the fields of the others.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Version {
        schema_version: Option<u32>,
    }
    if let Ok(Version {
        schema_version: Some(1),
    }) = serde_json::from_slice(body)
    {
        return Err(SCHEMA_1.into());
    }
    let m: ImageManifest =
        serde_json::from_slice(body).map_err(|e| format!("not an image manifest: {e}"))?;
    if m.schema_version != 2 {
        return Err(format!(
            "schemaVersion {} (only 2 is known)",
            m.schema_version
        ));
    }
    if let Some(t) = &m.media_type
        && t != MANIFEST_OCI
        && t != MANIFEST_DOCKER
    {
        return Err(format!("media type `{t}` is not an image manifest"));
    }
    if m.layers.is_empty() {
        return Err("the image has no layers".into());
    }
    for l in &m.layers {
        check_layer(l)?;
    }
    Ok((m.config, m.layers))
}

/// Choose the entry of an index for `platform`. Public for fuzzing.
pub fn choose_platform(body: &[u8], platform: &Platform) -> Result<(String, u64), String> {
    #[derive(Deserialize)]
    struct Index {
        manifests: Vec<IndexEntry>,
    }
    let idx: Index = serde_json::from_slice(body).map_err(|e| format!("not an index: {e}"))?;
    let mut offered = Vec::new();
    // Entries for the platform that are indexes themselves (not followed).
    let mut nested = Vec::new();
    for m in &idx.manifests {
        let index = m
            .media_type
            .as_deref()
            .is_some_and(|t| t == INDEX_OCI || t == MANIFEST_LIST_DOCKER);
        if index && m.platform.as_ref().is_none_or(|p| platform.matches(p)) {
            nested.push(m.digest.as_str());
        }
        let Some(p) = &m.platform else { continue };
        let image = m
            .media_type
            .as_deref()
            .is_none_or(|t| t == MANIFEST_OCI || t == MANIFEST_DOCKER);
        if !image || p.os == "unknown" {
            continue;
        }
        if platform.matches(p) {
            return Ok((m.digest.clone(), m.size));
        }
        let v = p
            .variant
            .as_deref()
            .map(|v| format!("/{v}"))
            .unwrap_or_default();
        offered.push(format!("{}/{}{v}", p.os, p.architecture));
    }
    if let Some(inner) = nested.first() {
        return Err(format!(
            "no image for platform {platform} in the index itself: its entry `{inner}` (for {platform}, or for no platform) is another index, which is not followed; pull that index by its digest (`@{inner}` in place of the tag) to choose from it"
        ));
    }
    Err(format!(
        "no image for platform {platform} (the index offers {}); choose one with --platform",
        if offered.is_empty() {
            "none".to_string()
        } else {
            offered.join(", ")
        }
    ))
}

/// Fetch a manifest or index by tag or digest: (body, digest, content type).
async fn fetch_manifest(
    s: &mut Session<'_>,
    r: &DockerRef,
    reference: &str,
) -> Result<(Vec<u8>, String, String), RemoteError> {
    let url = s.url(&format!("/v2/{}/manifests/{reference}", r.repository));
    let client = s.client();
    let make = || {
        client.get(url.as_str()).header(
            ACCEPT,
            format!("{MANIFEST_OCI}, {MANIFEST_DOCKER}, {INDEX_OCI}, {MANIFEST_LIST_DOCKER}"),
        )
    };
    let resp = s
        .send(&registry::pull_scope(&r.repository), &url, &make)
        .await?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(RemoteError::NotFound {
            host: r.host.clone(),
            what: format!("{}:{reference}", r.repository),
        });
    }
    let resp = registry::ok_or_status(resp, &url).await?;
    let ctype = registry::header_str(&resp, reqwest::header::CONTENT_TYPE).unwrap_or_default();
    let body = registry::read_limited(resp, &url, registry::MAX_MANIFEST).await?;
    let digest = sha256_hex(&body);
    if reference.starts_with("sha256:") && digest != reference {
        return Err(RemoteError::DigestMismatch {
            url,
            expected: reference.to_string(),
            actual: digest,
        });
    }
    Ok((body, digest, ctype))
}

/// Resolve `r` to the image manifest of `platform`.
async fn resolve(
    s: &mut Session<'_>,
    r: &DockerRef,
    platform: &Platform,
) -> Result<Resolved, RemoteError> {
    let reference = r
        .digest
        .clone()
        .or(r.tag.clone())
        .unwrap_or("latest".into());
    let (mut body, mut digest, ctype) = fetch_manifest(s, r, &reference).await?;
    let bad = |url: String, detail: String| RemoteError::Protocol {
        url,
        detail,
        source: None,
    };
    let murl = |s: &Session<'_>, reference: &str| {
        s.url(&format!("/v2/{}/manifests/{reference}", r.repository))
    };
    let is_index = ctype.starts_with(INDEX_OCI)
        || ctype.starts_with(MANIFEST_LIST_DOCKER)
        || serde_json::from_slice::<serde_json::Value>(&body)
            .is_ok_and(|v| v.get("manifests").is_some());
    if is_index {
        let (want, size) =
            choose_platform(&body, platform).map_err(|d| bad(murl(s, &reference), d))?;
        let (b, d, _) = fetch_manifest(s, r, &want).await?;
        if b.len() as u64 != size {
            return Err(bad(
                murl(s, &want),
                format!("the index says {size} bytes, the manifest has {}", b.len()),
            ));
        }
        (body, digest) = (b, d);
    }
    let (config, layers) = parse_image_manifest(&body).map_err(|d| bad(murl(s, &digest), d))?;
    Ok(Resolved {
        digest,
        config,
        layers,
    })
}

/// Download the image config into memory, checked.
async fn fetch_config(
    s: &mut Session<'_>,
    r: &DockerRef,
    d: &Descriptor,
) -> Result<Vec<u8>, RemoteError> {
    let url = s.url(&format!("/v2/{}/blobs/{}", r.repository, d.digest));
    if d.size > MAX_CONFIG {
        return Err(RemoteError::TooLong {
            url,
            limit: MAX_CONFIG,
        });
    }
    let client = s.client();
    let make = || client.get(url.as_str());
    let resp = s
        .send(&registry::pull_scope(&r.repository), &url, &make)
        .await?;
    let resp = registry::ok_or_status(resp, &url).await?;
    let body = registry::read_limited(resp, &url, d.size).await?;
    if body.len() as u64 != d.size {
        return Err(RemoteError::Truncated {
            url,
            expected: d.size,
            got: body.len() as u64,
        });
    }
    let got = sha256_hex(&body);
    if got != d.digest {
        return Err(RemoteError::DigestMismatch {
            url,
            expected: d.digest.clone(),
            actual: got,
        });
    }
    Ok(body)
}

/// One layer, ready to convert: downloaded now, or found in the cache.
enum Layer {
    New(Ingested),
    Known(crate::format::digest::Digest, std::fs::File),
}

impl Layer {
    /// A path the converter can open: the `tmp/` file, or the open blob's descriptor
    /// (which stays readable whatever gc does to its path).
    fn path(&self) -> PathBuf {
        match self {
            Layer::New(i) => i.path().to_path_buf(),
            Layer::Known(_, f) => PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())),
        }
    }
}

/// What the download step hands to the conversion.
struct Downloaded {
    resolved: Resolved,
    /// The image's platform, as its config says (see [`image_platform`]).
    platform: Platform,
    config: Vec<u8>,
    config_part: Option<Ingested>,
    config_known: Option<crate::format::digest::Digest>,
    layers: Vec<Layer>,
}

/// The name's entry, when it already holds a conversion of `manifest` from `source` whose
/// SIF is in the cache. Layers that gc dropped under size pressure do not count: the SIF
/// is kept (a conversion would give the same bytes), and `pull --force` fetches them again
/// for `export`.
fn unchanged(cache: &Cache, name: &Reference, source: &str, manifest: &str) -> Option<Entry> {
    // One lookup: the entry compared is the one whose file is checked and handed out.
    cache
        .entry_in_use(name, |e| {
            e.source.as_deref() == Some(source)
                && e.labels.get(LABEL_MANIFEST).map(String::as_str) == Some(manifest)
        })
        .ok()
        .flatten()
}

/// Whether an image of platform `is` is what `asked` asks for: the same os and
/// architecture, and the same variant where the image names one (as an index entry is
/// matched: `arm64` asked matches `v8` or none).
fn agrees(asked: &Platform, is: &Platform) -> bool {
    match &is.variant {
        Some(_) => asked.matches(&IndexPlatform {
            os: is.os.clone(),
            architecture: is.architecture.clone(),
            variant: is.variant.clone(),
        }),
        None => asked.os == is.os && asked.architecture == is.architecture,
    }
}

/// Whether the platform an entry records agrees with `asked`, so that an unchanged
/// manifest may be answered from the cache; otherwise the pull goes on to the config,
/// which refuses the request naming what the image is.
fn recorded_platform_agrees(e: &Entry, asked: &Platform) -> bool {
    e.labels
        .get(LABEL_PLATFORM)
        .and_then(|p| Platform::parse(p).ok())
        .is_some_and(|is| agrees(asked, &is))
}

/// The image's platform, from its config's `os`, `architecture` and `variant` (a field the
/// config leaves empty is taken from `asked`), when it agrees with the platform asked for
/// (`explicit`: with `--platform`; otherwise the host's); otherwise an error naming what
/// the image is. An index's entry may claim a platform its image is not: the config decides.
fn image_platform(
    config: &[u8],
    asked: &Platform,
    explicit: bool,
    source: &str,
) -> Result<Platform, RemoteError> {
    let c: IndexPlatform = serde_json::from_slice(config).map_err(|e| RemoteError::Convert {
        image: source.to_string(),
        detail: format!("the image config is not valid JSON: {e}"),
        source: Some(Box::new(e)),
    })?;
    let or_asked = |v: String, a: &str| if v.is_empty() { a.to_string() } else { v };
    let is = Platform {
        os: or_asked(c.os, &asked.os),
        architecture: or_asked(c.architecture, &asked.architecture),
        variant: c.variant.filter(|v| !v.is_empty()),
    };
    if agrees(asked, &is) {
        let variant = is.variant.or_else(|| asked.variant.clone());
        return Ok(Platform { variant, ..is });
    }
    let how = if explicit {
        "asked for with --platform"
    } else {
        "this machine's, the default"
    };
    Err(RemoteError::Convert {
        image: source.to_string(),
        detail: format!(
            "the image is {is}, not {asked} ({how}); nothing was stored (pull it with --platform {is} to convert it as what it is)"
        ),
        source: None,
    })
}

/// `pull docker://...` under the per-pull lock: resolve, download what the cache lacks,
/// convert, commit. When the name already holds this manifest's conversion (with all its
/// layers), nothing more is fetched and the outcome says so (unless `opts.refetch`).
pub(super) fn pull_locked(
    cache: &Cache,
    r: &DockerRef,
    source: &str,
    name: &Reference,
    opts: &RemoteOptions,
) -> Result<PullOutcome, RemoteError> {
    let platform = match &opts.platform {
        Some(p) => Platform::parse(p).map_err(|reason| super::transport::bad_ref(p, reason))?,
        None => Platform::host(),
    };
    let (c, r_, o, n, src, plat) = (
        cache.clone(),
        r.clone(),
        opts.clone(),
        name.clone(),
        source.to_string(),
        platform.clone(),
    );
    let step = runtime::run(async move {
        let (cache, r, opts) = (&c, &r_, &o);
        let transport = Transport::new(opts)?;
        let creds = if opts.anonymous {
            None
        } else {
            auth::credentials_for(&r.host)?
        };
        let mut s = Session::new(&transport, r.api_host(), creds);
        let resolved = resolve(&mut s, r, &plat).await?;
        if !opts.refetch
            && let Some(e) = unchanged(cache, &n, &src, &resolved.digest)
            && recorded_platform_agrees(&e, &plat)
        {
            return Ok(Err(e));
        }
        if let Some(e) = super::held_by_a_tier(opts, |e| {
            e.labels.get(LABEL_MANIFEST) == Some(&resolved.digest)
                && recorded_platform_agrees(e, &plat)
        })? {
            return Ok(Err(e));
        }
        let mut wanted: Vec<&str> = resolved.layers.iter().map(|l| l.digest.as_str()).collect();
        wanted.push(resolved.config.digest.as_str());
        let mut known = cache.open_by_remote_digest(&wanted)?;
        let in_tiers = in_tiers(&opts.tiers, &wanted, &known)?;
        let config = fetch_config(&mut s, r, &resolved.config).await?;
        let platform = image_platform(&config, &plat, opts.platform.is_some(), &src)?;
        let (config_part, config_known) = match known.remove(&resolved.config.digest) {
            Some((d, _)) => (None, Some(d)),
            None => {
                let mut ing = cache.ingest(()).map_err(|e| RemoteError::Io {
                    path: e.path,
                    source: e.source,
                })?;
                let io = |p: PathBuf| move |source| RemoteError::Io { path: p, source };
                let p = ing.path().to_path_buf();
                ing.write(bytes::Bytes::from(config.clone()))
                    .map_err(io(p.clone()))?;
                (Some(ing.seal().map_err(io(p))?), None)
            }
        };
        let mut layers = Vec::with_capacity(resolved.layers.len());
        for l in &resolved.layers {
            if let Some((d, f)) = known.get(&l.digest) {
                let f = f.try_clone().map_err(|source| RemoteError::Io {
                    path: cache.blob_path(d),
                    source,
                })?;
                layers.push(Layer::Known(*d, f));
                continue;
            }
            if let Some((tier, f)) = in_tiers.get(&l.digest) {
                layers.push(Layer::New(copy_from_tier(cache, tier, f, l, opts)?));
                continue;
            }
            let url = s.url(&format!("/v2/{}/blobs/{}", r.repository, l.digest));
            let mut sink = Sink::new(cache, &url, Some(l.size), &opts.limits)?;
            registry::download(
                &mut s,
                &registry::pull_scope(&r.repository),
                &url,
                &mut sink,
                opts,
                Validators::default(),
            )
            .await?;
            let (ingested, _) = sink.finish(Some(l.size), Some(&l.digest))?;
            layers.push(Layer::New(ingested));
        }
        Ok(Ok(Downloaded {
            resolved,
            platform,
            config,
            config_part,
            config_known,
            layers,
        }))
    })?;
    let d = match step {
        Ok(d) => d,
        Err(entry) => {
            return Ok(PullOutcome {
                entry,
                downloaded: false,
                unreached: None,
            });
        }
    };
    crate::testhook::pause("docker-downloaded");
    let platform = d.platform.clone();
    Ok(PullOutcome {
        entry: convert_and_commit(cache, d, source, name, &platform, opts)?,
        downloaded: true,
        unreached: None,
    })
}

/// The layers of `wanted` that the writable cache lacks (`known`) and a tier holds (the
/// first in order), each with the tier and its blob opened; read-only (see
/// `crate::cache::tiers`).
fn in_tiers(
    tiers: &[PathBuf],
    wanted: &[&str],
    known: &std::collections::HashMap<String, (crate::format::digest::Digest, std::fs::File)>,
) -> Result<std::collections::HashMap<String, (PathBuf, std::fs::File)>, RemoteError> {
    let mut found = std::collections::HashMap::new();
    for tier in tiers {
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|w| !known.contains_key(*w) && !found.contains_key(*w))
            .collect();
        if missing.is_empty() {
            break;
        }
        let t = Cache::open_tier(tier)?;
        for (remote, (d, f)) in t.open_by_remote_digest(&missing)? {
            found.insert(remote, (t.blob_path(&d), f));
        }
    }
    Ok(found)
}

/// A layer a tier holds, copied into the writable cache through a sink as a download
/// would be (its size and sha256 checked), without the network.
fn copy_from_tier(
    cache: &Cache,
    tier_blob: &std::path::Path,
    file: &std::fs::File,
    l: &Descriptor,
    opts: &RemoteOptions,
) -> Result<Ingested, RemoteError> {
    use std::io::Read;
    let from = tier_blob.display().to_string();
    let mut sink = Sink::new(cache, &from, Some(l.size), &opts.limits)?;
    let mut f = file;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|source| RemoteError::Io {
            path: tier_blob.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        sink.write(bytes::Bytes::copy_from_slice(&buf[..n]))?;
    }
    Ok(sink.finish(Some(l.size), Some(&l.digest))?.0)
}

/// Convert the downloaded image into a SIF in `tmp/` and commit it with its parts.
fn convert_and_commit(
    cache: &Cache,
    d: Downloaded,
    source: &str,
    name: &Reference,
    platform: &Platform,
    opts: &RemoteOptions,
) -> Result<Entry, RemoteError> {
    let paths: Vec<PathBuf> = d.layers.iter().map(Layer::path).collect();
    let files: Vec<crate::convert::LayerFile<'_>> = d
        .resolved
        .layers
        .iter()
        .zip(&paths)
        .map(|(l, p)| crate::convert::LayerFile {
            path: p,
            media_type: &l.media_type,
            digest: &l.digest,
        })
        .collect();
    let scratch = cache.scratch().map_err(|e| RemoteError::Io {
        path: e.path,
        source: e.source,
    })?;
    let copts = crate::convert::ConvertOptions {
        compression: opts
            .squashfs_comp
            .clone()
            .unwrap_or_else(|| "gzip".to_string()),
        level: None,
        arch: platform.architecture.clone(),
        processors: None,
        identity: Some(format!("{}@{platform}", d.resolved.digest)),
    };
    // The SIF is held to the free space the cache keeps, as a download is.
    let tmp = cache.tmp_dir().to_path_buf();
    let min_free = opts.limits.min_free;
    let room = move || {
        crate::cache::limits::space(&tmp)
            .ok()
            .map(|(free, _)| free.saturating_sub(min_free))
    };
    let watch = crate::convert::SpaceWatch(std::sync::Arc::new(room));
    crate::convert::write_sif_watched(&files, &d.config, scratch.path(), &copts, Some(&watch))
        .map_err(|e| match e {
            crate::convert::ConvertError::NoSpace { .. } => RemoteError::NoSpaceConverting {
                image: source.to_string(),
                dir: cache.tmp_dir().to_path_buf(),
                min_free,
            },
            e => RemoteError::Convert {
                image: source.to_string(),
                detail: e.to_string(),
                source: Some(Box::new(e)),
            },
        })?;
    let scratch_path = scratch.path().to_path_buf();
    let sif = scratch.seal().map_err(|source| RemoteError::Io {
        path: scratch_path,
        source,
    })?;
    crate::testhook::pause("docker-converted");
    let mut labels = opts.labels.clone();
    labels.extend(image_labels(&d.config, &d.resolved, platform));
    let mut parts = Vec::new();
    for (l, desc) in d.layers.into_iter().zip(&d.resolved.layers) {
        parts.push(match l {
            Layer::New(content) => Part::New {
                content,
                media_type: desc.media_type.clone(),
                remote_digest: desc.digest.clone(),
            },
            Layer::Known(digest, _) => Part::Known(digest),
        });
    }
    match (d.config_part, d.config_known) {
        (Some(content), _) => parts.push(Part::New {
            content,
            media_type: d.resolved.config.media_type.clone(),
            remote_digest: d.resolved.config.digest.clone(),
        }),
        (None, Some(digest)) => parts.push(Part::Known(digest)),
        (None, None) => {}
    }
    Ok(cache.commit_image(
        sif,
        parts,
        name,
        Provenance {
            source: source.to_string(),
            labels,
            media_type: Some(SIF_MEDIA_TYPE.to_string()),
            remote_digest: None,
        },
        opts.repoint,
    )?)
}

/// The labels a converted image's name records: manifest digest, platform, and what the
/// image's config says about how it runs.
fn image_labels(
    config: &[u8],
    resolved: &Resolved,
    platform: &Platform,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(LABEL_MANIFEST.to_string(), resolved.digest.clone());
    out.insert(LABEL_PLATFORM.to_string(), platform.to_string());
    out.insert(
        "org.sregistry.docker.layers".to_string(),
        resolved
            .layers
            .iter()
            .map(|l| l.digest.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    let v: serde_json::Value = serde_json::from_slice(config).unwrap_or_default();
    let c = &v["config"];
    for (key, field) in [("entrypoint", "Entrypoint"), ("cmd", "Cmd"), ("env", "Env")] {
        if let Some(a) = c[field].as_array() {
            out.insert(
                format!("org.sregistry.docker.{key}"),
                serde_json::to_string(a).unwrap_or_default(),
            );
        }
    }
    if let Some(w) = c["WorkingDir"].as_str().filter(|w| !w.is_empty()) {
        out.insert("org.sregistry.docker.workdir".to_string(), w.to_string());
    }
    if let Some(l) = c["Labels"].as_object() {
        for (k, val) in l {
            if let Some(s) = val.as_str() {
                out.entry(k.clone()).or_insert_with(|| s.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_references_resolve_as_docker_does() {
        let r = DockerRef::parse("busybox").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.local_name(), "docker.io/library/busybox:latest");
        let r = DockerRef::parse("lab/tool:1.2").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str()),
            ("docker.io", "lab/tool")
        );
        let r = DockerRef::parse("127.0.0.1:5000/lab/tool:1.2").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "lab/tool")
        );
        assert_eq!(r.api_host(), "127.0.0.1:5000");
        let r = DockerRef::parse("localhost/x").unwrap();
        assert_eq!(r.host, "localhost");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = DockerRef::parse(&format!("ubuntu@{d}")).unwrap();
        assert_eq!(r.repository, "library/ubuntu");
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.tag, None);
        assert_eq!(
            DockerRef::parse("index.docker.io/library/alpine:3")
                .unwrap()
                .host,
            "docker.io"
        );
        for bad in ["", "UPPER/x", "h.io/", "x@sha256:12"] {
            assert!(DockerRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_platform_names_its_own_image_the_same_on_every_node() {
        let name = |p: &str| platform_name("h/lab/t:1", &Platform::parse(p).unwrap());
        assert_eq!(name("linux/amd64"), "h/lab/t:1");
        assert_eq!(name("linux/arm64"), "h/lab/t:1-linux-arm64");
        assert_eq!(name("linux/arm64/v8"), "h/lab/t:1-linux-arm64");
        assert_eq!(name("linux/arm"), "h/lab/t:1-linux-arm-v7");
        assert_eq!(name("linux/arm/v6"), "h/lab/t:1-linux-arm-v6");
        assert_eq!(name("linux/s390x"), "h/lab/t:1-linux-s390x");
    }

    #[test]
    fn platforms_match_as_docker_matches_them() {
        let p = |os: &str, a: &str, v: Option<&str>| IndexPlatform {
            os: os.into(),
            architecture: a.into(),
            variant: v.map(str::to_string),
        };
        let amd = Platform::parse("linux/amd64").unwrap();
        assert!(amd.matches(&p("linux", "amd64", None)));
        assert!(!amd.matches(&p("linux", "arm64", None)));
        assert!(!amd.matches(&p("windows", "amd64", None)));
        let arm = Platform::parse("linux/arm64").unwrap();
        assert!(arm.matches(&p("linux", "arm64", Some("v8"))));
        assert!(arm.matches(&p("linux", "arm64", None)));
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert!(v7.matches(&p("linux", "arm", Some("v7"))));
        assert!(!v7.matches(&p("linux", "arm", Some("v6"))));
        for bad in ["linux", "linux/", "Linux/amd64", "a/b/c/d"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_index_yields_the_platform_asked_for_and_says_what_it_offers() {
        let body = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":10,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":11,"platform":{"os":"linux","architecture":"amd64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:cc","size":12,"platform":{"os":"unknown","architecture":"unknown"}}]}"#;
        let amd = Platform::parse("linux/amd64").unwrap();
        assert_eq!(
            choose_platform(body, &amd).unwrap(),
            ("sha256:bb".into(), 11)
        );
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(
            choose_platform(body, &arm).unwrap(),
            ("sha256:aa".into(), 10)
        );
        let e = choose_platform(body, &Platform::parse("linux/s390x").unwrap()).unwrap_err();
        assert!(e.contains("linux/arm64/v8, linux/amd64"), "{e}");
        assert!(!e.contains("unknown"), "{e}");
    }

    #[test]
    fn manifests_with_foreign_or_no_layers_are_refused() {
        let m = |layers: &str| {
            format!(
                r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c","size":2}},"layers":[{layers}]}}"#
            )
        };
        let gz = r#"{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:l","size":3}"#;
        assert_eq!(parse_image_manifest(m(gz).as_bytes()).unwrap().1.len(), 1);
        let foreign = r#"{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"sha256:w","size":3}"#;
        let e = parse_image_manifest(m(foreign).as_bytes()).unwrap_err();
        assert!(e.contains("sha256:w") && e.contains("foreign"), "{e}");
        assert!(parse_image_manifest(m("").as_bytes()).is_err());
    }
}
