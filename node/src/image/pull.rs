//! Pulling from an OCI/Docker registry with `oci-client` (the registry
//! protocol, the `WWW-Authenticate` bearer-token flow, digest checks of
//! manifests and blobs): resolve a reference to the digest the manager
//! pins, then fetch that manifest (a manifest list is resolved to this
//! node's platform), the config and every layer, unpacking each layer as it
//! arrives (no copy of the compressed blob is kept).
//!
//! Transport, as Docker: plain HTTP to a registry on a loopback address
//! (127.0.0.0/8, ::1, `localhost`), HTTPS with the system's roots to any
//! other; a registry listed in `insecure_registries` gets HTTPS without
//! certificate checks and, when HTTPS fails to connect, plain HTTP.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use sha2::{Digest as _, Sha256};

use super::error::{ImageError, Result};
use super::platform::Platform;
use super::progress::{LayerState, Progress, ProgressFn};
use super::reference::ImageRef;
use super::store::{ImageConfig, ImageInfo, ImageStore};
use super::unpack::{self, UnpackError};

/// Manifest types we read: Docker schema 2 and OCI, single and lists.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

/// How the node talks to registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// `HOST[:PORT]` of registries that may use plain HTTP or an untrusted
    /// certificate (the daemon's `--insecure-registry`). Loopback ones need
    /// no entry.
    pub insecure_registries: Vec<String>,
    /// Which variant of a manifest list to take (default: this node's).
    pub platform: Platform,
    /// `registry → (user, password)`, for private repositories.
    pub credentials: HashMap<String, (String, String)>,
    /// Layers fetched at once.
    pub parallel_layers: usize,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure_registries: Vec::new(),
            platform: Platform::host(),
            credentials: HashMap::new(),
            parallel_layers: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Https,
    HttpsNoVerify,
    Http,
}

/// Pulls images into an [`ImageStore`].
pub struct Puller {
    store: Arc<ImageStore>,
    opts: RegistryOptions,
    https: Client,
    https_no_verify: Client,
    http: Client,
    /// Insecure registries found to speak plain HTTP.
    plain: Mutex<HashSet<String>>,
}

fn client(protocol: ClientProtocol, accept_invalid_certificates: bool) -> Result<Client> {
    let config = ClientConfig {
        protocol,
        accept_invalid_certificates,
        // We choose the platform ourselves, to name the ones an image has
        // when none fits.
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: concat!("swarmlet/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    Client::try_from(config).map_err(|e| ImageError::Unsupported {
        reference: String::new(),
        detail: format!("cannot set up the registry client: {e}"),
    })
}

/// Whether `bytes` is an image manifest or index (schema version 2, with
/// `layers` or `manifests`), as every registry answers the manifest route.
fn looks_like_manifest(bytes: &[u8]) -> std::result::Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| "not JSON".to_string())?;
    if v.get("schemaVersion").and_then(|x| x.as_u64()) != Some(2) {
        return Err("no schemaVersion 2".into());
    }
    if v.get("layers").is_none() && v.get("manifests").is_none() {
        return Err("neither layers nor manifests".into());
    }
    Ok(())
}

/// `sha256:` of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The error and its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

impl Puller {
    pub fn new(store: Arc<ImageStore>, opts: RegistryOptions) -> Result<Puller> {
        // reqwest's rustls over ring, the provider the rest of the node
        // uses; a no-op when the process installed it already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Puller {
            store,
            https: client(ClientProtocol::Https, false)?,
            https_no_verify: client(ClientProtocol::Https, true)?,
            http: client(ClientProtocol::Http, false)?,
            plain: Mutex::default(),
            opts,
        })
    }

    pub fn store(&self) -> &Arc<ImageStore> {
        &self.store
    }

    fn is_insecure(&self, registry: &str) -> bool {
        let host = super::reference::registry_host(registry);
        self.opts
            .insecure_registries
            .iter()
            .any(|r| r == registry || r == host)
    }

    fn scheme(&self, registry: &str) -> Scheme {
        if super::reference::is_loopback_registry(registry) {
            Scheme::Http
        } else if self.is_insecure(registry) {
            if self
                .plain
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(registry)
            {
                Scheme::Http
            } else {
                Scheme::HttpsNoVerify
            }
        } else {
            Scheme::Https
        }
    }

    fn client(&self, scheme: Scheme) -> &Client {
        match scheme {
            Scheme::Https => &self.https,
            Scheme::HttpsNoVerify => &self.https_no_verify,
            Scheme::Http => &self.http,
        }
    }

    fn auth(&self, registry: &str) -> RegistryAuth {
        match self.opts.credentials.get(registry) {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// Fetches a manifest (raw bytes and digest, checked against the
    /// reference's digest if it has one). The first request to a registry,
    /// so it also settles HTTPS vs HTTP for an insecure one.
    async fn manifest(&self, r: &ImageRef) -> Result<(Bytes, String)> {
        let reg = r.registry();
        let auth = self.auth(reg);
        let scheme = self.scheme(reg);
        let res = self
            .client(scheme)
            .pull_manifest_raw(r.oci(), &auth, MANIFEST_TYPES)
            .await;
        let res = match res {
            Err(OciDistributionError::RequestError(e))
                if scheme == Scheme::HttpsNoVerify && e.is_connect() =>
            {
                tracing::info!(
                    registry = reg,
                    "HTTPS failed ({e}); trying plain HTTP as for an insecure registry"
                );
                let r2 = self
                    .http
                    .pull_manifest_raw(r.oci(), &auth, MANIFEST_TYPES)
                    .await;
                if r2.is_ok() {
                    self.plain
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(reg.to_string());
                }
                r2
            }
            other => other,
        };
        let (bytes, digest) = match res.map_err(|e| self.map_err(e, r, "manifest")) {
            Ok(x) => x,
            Err(ImageError::UnknownTag { reference, .. }) => {
                return Err(self.unknown_tag(r, reference).await)
            }
            Err(e) => return Err(e),
        };
        // oci-client checked the body against the registry's digest header
        // and the reference's digest; the digest we record is the body's.
        let actual = sha256(&bytes);
        if let Some(want) = r.digest() {
            if want != actual {
                return Err(ImageError::DigestMismatch {
                    reference: r.to_string(),
                    what: "the manifest".into(),
                    expected: want.to_string(),
                    actual,
                });
            }
        }
        if digest != actual && digest.starts_with("sha256:") {
            return Err(ImageError::DigestMismatch {
                reference: r.to_string(),
                what: "the manifest".into(),
                expected: digest,
                actual,
            });
        }
        // A server that is not a registry (a web server answering HTML)
        // must not get its page pinned as an image's digest.
        if let Err(why) = looks_like_manifest(&bytes) {
            return Err(ImageError::Registry {
                registry: reg.to_string(),
                reference: r.to_string(),
                detail: format!(
                    "its answer is not an image manifest ({why}); is {reg} an OCI/Docker registry?"
                ),
            });
        }
        Ok((bytes, actual))
    }

    /// A registry answers "manifest unknown" for a missing tag and for a
    /// missing repository alike: its tag list tells them apart (and names
    /// the tags there are).
    async fn unknown_tag(&self, r: &ImageRef, reference: String) -> ImageError {
        let client = self.client(self.scheme(r.registry()));
        match client
            .list_tags(r.oci(), &self.auth(r.registry()), Some(20), None)
            .await
        {
            Ok(t) if t.tags.is_empty() => ImageError::UnknownTag {
                reference,
                known: "; the repository has no tags".into(),
            },
            Ok(t) => ImageError::UnknownTag {
                reference,
                known: format!("; the repository has: {}", t.tags.join(", ")),
            },
            Err(e) => match self.map_err(e, r, "the tag list") {
                e @ ImageError::UnknownRepository { .. } => e,
                _ => ImageError::UnknownTag {
                    reference,
                    known: String::new(),
                },
            },
        }
    }

    /// The digest `r` names now: what `service create` pins (for a manifest
    /// list, the list's digest, so every node takes its own platform's
    /// variant of the same release).
    pub async fn resolve(&self, r: &ImageRef) -> Result<String> {
        let (_, digest) = self.manifest(r).await?;
        Ok(digest)
    }

    /// Pulls `r` (by tag or digest) into the store, reporting per-layer
    /// progress. A failed pull writes no image record; layers it had
    /// already checked stay in the store unreferenced (a retry skips them;
    /// the next `remove` collects them if nothing does).
    pub async fn pull(&self, r: &ImageRef, progress: ProgressFn<'_>) -> Result<ImageInfo> {
        let (top, top_digest) = self.manifest(r).await?;
        let pinned = r.with_digest(&top_digest);
        let mut blobs = vec![(top_digest.clone(), top.clone())];
        let parsed: OciManifest =
            serde_json::from_slice(&top).map_err(|e| ImageError::Unsupported {
                reference: r.to_string(),
                detail: format!("the registry's manifest is not one this node reads ({e})"),
            })?;
        let (manifest, manifest_digest) = match parsed {
            OciManifest::Image(m) => (m, top_digest.clone()),
            OciManifest::ImageIndex(index) => {
                let chosen = self
                    .opts
                    .platform
                    .choose(&index.manifests)
                    .map_err(|available| ImageError::NoMatchingPlatform {
                        reference: r.to_string(),
                        wanted: self.opts.platform.to_string(),
                        available: if available.is_empty() {
                            "no platform listed".into()
                        } else {
                            available.join(", ")
                        },
                    })?;
                let (bytes, d) = self.manifest(&r.with_digest(&chosen)).await?;
                let m = match serde_json::from_slice::<OciManifest>(&bytes) {
                    Ok(OciManifest::Image(m)) => m,
                    _ => {
                        return Err(ImageError::Unsupported {
                            reference: r.to_string(),
                            detail: format!(
                                "the entry {chosen} of its manifest list is not an image manifest"
                            ),
                        })
                    }
                };
                blobs.push((d.clone(), bytes));
                (m, d)
            }
        };
        check_media_types(r, &manifest)?;

        // The config: small, fetched whole, checked against its digest.
        let scheme = self.scheme(r.registry());
        let client = self.client(scheme);
        let mut config_bytes = Vec::new();
        client
            .pull_blob(pinned.oci(), &manifest.config, &mut config_bytes)
            .await
            .map_err(|e| self.map_err(e, r, "the image config"))?;
        let config_digest = sha256(&config_bytes);
        if config_digest != manifest.config.digest {
            return Err(ImageError::DigestMismatch {
                reference: r.to_string(),
                what: "the image config".into(),
                expected: manifest.config.digest.clone(),
                actual: config_digest,
            });
        }
        let config = parse_config(r, &config_bytes)?;
        let platform = config_platform(&config);
        if !self.opts.platform.accepts(
            &config.os().to_string(),
            &config.architecture().to_string(),
            config.variant().as_deref(),
        ) {
            return Err(ImageError::NoMatchingPlatform {
                reference: r.to_string(),
                wanted: self.opts.platform.to_string(),
                available: platform,
            });
        }
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::BadLayer {
                reference: r.to_string(),
                detail: format!(
                    "the manifest lists {} layers but the config {}",
                    manifest.layers.len(),
                    diff_ids.len()
                ),
            });
        }
        blobs.push((config_digest.clone(), config_bytes.into()));
        let mut pinned_ids: Vec<String> = diff_ids.clone();
        pinned_ids.extend(blobs.iter().map(|(d, _)| d.clone()));
        let _pins = self.store.pin(&pinned_ids);

        let count = manifest.layers.len();
        let results: Vec<Result<u64>> =
            // Indices, not borrowed items: a closure over references is
            // not general enough for the future to be `Send` (rustc #64552),
            // and the node pulls in spawned tasks.
            futures::stream::iter(0..count)
                .map(|index| {
                    let (desc, diff_id) = (&manifest.layers[index], &diff_ids[index]);
                    self.fetch_layer(client, &pinned, r, desc, diff_id, index, count, progress)
                })
                .buffered(self.opts.parallel_layers.max(1))
                .collect()
                .await;
        let mut size = 0;
        for res in results {
            size += res?;
        }

        for (d, b) in &blobs {
            self.store.put_blob(d, b)?;
        }
        let info = ImageInfo {
            id: config_digest,
            names: r.tagged_name().into_iter().collect(),
            repo_digests: vec![format!("{}@{top_digest}", r.name())],
            manifest_digest: Some(manifest_digest),
            platform,
            layers: diff_ids,
            size,
            config: ImageConfig::from_oci(&config),
            created: config.created().clone(),
            blobs: blobs.into_iter().map(|(d, _)| d).collect(),
        };
        let info = self.store.save(info)?;
        tracing::info!(image = %r, id = %info.id, "pulled");
        Ok(info)
    }

    /// One layer: skipped if the store has it, else streamed from the
    /// registry into the unpacker, both digests checked, then moved into
    /// the store. Returns its unpacked size.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_layer(
        &self,
        client: &Client,
        pinned: &ImageRef,
        r: &ImageRef,
        desc: &OciDescriptor,
        diff_id: &str,
        index: usize,
        count: usize,
        progress: ProgressFn<'_>,
    ) -> Result<u64> {
        let report = |state| {
            progress(Progress {
                layer: desc.digest.clone(),
                index,
                count,
                state,
            })
        };
        if self.store.has_layer(diff_id) {
            report(LayerState::AlreadyExists);
            return Ok(self.store.layer_size(diff_id));
        }
        let total = u64::try_from(desc.size).ok();
        report(LayerState::Downloading { done: 0, total });
        let sized = client
            .pull_blob_stream(pinned.oci(), desc)
            .await
            .map_err(|e| self.map_err(e, r, "a layer"))?;
        let tmp = self.store.temp_dir()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        // The unpacker owns the directory it writes: if this pull is
        // cancelled (its future dropped), the closed channel ends the
        // unpack, and only then is the directory removed.
        let unpacker = tokio::task::spawn_blocking(move || {
            let unpacked = unpack::unpack_layer(
                ChannelReader {
                    rx,
                    buf: Bytes::new(),
                },
                tmp.path(),
            );
            (tmp, unpacked)
        });
        let mut stream = sized.stream;
        let mut hasher = Sha256::new();
        let (mut done, mut last) = (0u64, 0u64);
        let mut net_err = None;
        let mut unpacker_gone = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => {
                    hasher.update(&chunk);
                    done += chunk.len() as u64;
                    // Keep reading (and hashing) after the unpacker gave
                    // up: a corrupted blob must be reported as such, not as
                    // the broken archive it unpacks to.
                    if !unpacker_gone && tx.send(chunk).await.is_err() {
                        unpacker_gone = true;
                    }
                    if done - last >= 512 * 1024 {
                        last = done;
                        report(LayerState::Downloading { done, total });
                    }
                }
                Err(e) => {
                    net_err = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let unpacked = unpacker.await;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if let Some(e) = net_err {
            if let Some(oci_client::errors::DigestError::VerificationError { expected, actual }) =
                e.get_ref().and_then(|i| i.downcast_ref())
            {
                return Err(ImageError::DigestMismatch {
                    reference: r.to_string(),
                    what: format!("layer {}", desc.digest),
                    expected: expected.clone(),
                    actual: actual.clone(),
                });
            }
            return Err(ImageError::Unreachable {
                registry: r.registry().to_string(),
                detail: format!(
                    "the download of layer {} broke off: {}",
                    desc.digest,
                    chain(&e)
                ),
                hint: String::new(),
            });
        }
        if actual != desc.digest {
            return Err(ImageError::DigestMismatch {
                reference: r.to_string(),
                what: format!("layer {}", desc.digest),
                expected: desc.digest.clone(),
                actual,
            });
        }
        let (tmp, unpacked) = unpacked.map_err(|e| ImageError::BadLayer {
            reference: r.to_string(),
            detail: format!("unpacking stopped: {e}"),
        })?;
        let unpacked = unpacked.map_err(|e| unpack_error(r, &desc.digest, e))?;
        if unpacked.diff_id != diff_id {
            return Err(ImageError::DigestMismatch {
                reference: r.to_string(),
                what: format!("the uncompressed layer {}", desc.digest),
                expected: diff_id.to_string(),
                actual: unpacked.diff_id,
            });
        }
        self.store.commit_layer(tmp, diff_id, unpacked.size)?;
        report(LayerState::Complete);
        Ok(unpacked.size)
    }

    /// A user-facing error for what oci-client reports.
    fn map_err(&self, e: OciDistributionError, r: &ImageRef, what: &str) -> ImageError {
        let registry = r.registry().to_string();
        let reference = r.to_string();
        let not_found_tag = || ImageError::UnknownTag {
            reference: reference.clone(),
            known: String::new(),
        };
        match e {
            OciDistributionError::RequestError(re) => {
                if re.is_timeout() && !re.is_connect() {
                    ImageError::NoAnswer {
                        registry,
                        detail: chain(&re),
                    }
                } else if re.is_connect() || re.is_timeout() {
                    let hint = if r.is_loopback_registry() || self.is_insecure(&registry) {
                        String::new()
                    } else {
                        format!("; a registry that serves plain HTTP or a self-signed certificate must be listed with the daemon's --insecure-registry {registry}")
                    };
                    ImageError::Unreachable {
                        registry,
                        detail: chain(&re),
                        hint,
                    }
                } else {
                    ImageError::Registry {
                        registry,
                        reference,
                        detail: chain(&re),
                    }
                }
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.contains(&&OciErrorCode::NameUnknown) {
                    ImageError::UnknownRepository {
                        registry,
                        repository: r.repository().to_string(),
                    }
                } else if codes.contains(&&OciErrorCode::ManifestUnknown)
                    || codes.contains(&&OciErrorCode::NotFound)
                {
                    not_found_tag()
                } else if codes.contains(&&OciErrorCode::Unauthorized)
                    || codes.contains(&&OciErrorCode::Denied)
                {
                    ImageError::AccessDenied {
                        reference,
                        registry,
                        detail: envelope.to_string(),
                    }
                } else if codes.contains(&&OciErrorCode::BlobUnknown) {
                    ImageError::Registry {
                        registry,
                        reference,
                        detail: format!("it lacks {what} the manifest names ({envelope})"),
                    }
                } else {
                    ImageError::Registry {
                        registry,
                        reference,
                        detail: envelope.to_string(),
                    }
                }
            }
            OciDistributionError::ServerError { code: 404, .. }
            | OciDistributionError::ImageManifestNotFoundError(_) => not_found_tag(),
            OciDistributionError::ServerError {
                code: 401 | 403,
                message,
                ..
            } => ImageError::AccessDenied {
                reference,
                registry,
                detail: message,
            },
            OciDistributionError::UnauthorizedError { .. } => ImageError::AccessDenied {
                reference,
                registry,
                detail: "401 Unauthorized".into(),
            },
            OciDistributionError::AuthenticationFailure(m) => ImageError::AccessDenied {
                reference,
                registry,
                detail: format!("token request refused: {m}"),
            },
            OciDistributionError::DigestError(
                oci_client::errors::DigestError::VerificationError { expected, actual },
            ) => ImageError::DigestMismatch {
                reference,
                what: what.to_string(),
                expected,
                actual,
            },
            OciDistributionError::ManifestParsingError(m)
            | OciDistributionError::VersionedParsingError(m)
            | OciDistributionError::UnsupportedMediaTypeError(m) => ImageError::Unsupported {
                reference,
                detail: format!("{what} is not one this node reads ({m})"),
            },
            other => ImageError::Registry {
                registry,
                reference,
                detail: chain(&other),
            },
        }
    }
}

/// Refuses, before any download, what this node cannot run.
fn check_media_types(r: &ImageRef, m: &OciImageManifest) -> Result<()> {
    let config_ok = matches!(
        m.config.media_type.as_str(),
        "application/vnd.oci.image.config.v1+json"
            | "application/vnd.docker.container.image.v1+json"
    );
    if !config_ok {
        return Err(ImageError::Unsupported {
            reference: r.to_string(),
            detail: format!(
                "not a container image (its config is {}); give an image a container runtime runs",
                m.config.media_type
            ),
        });
    }
    for l in &m.layers {
        let t = l.media_type.as_str();
        if t.contains("zstd") {
            return Err(ImageError::Unsupported {
                reference: r.to_string(),
                detail: "its layers are zstd-compressed, which this node does not unpack; push the image with gzip layers".into(),
            });
        }
        if !(t.contains("layer") || t.contains("rootfs")) || !t.contains("tar") {
            return Err(ImageError::Unsupported {
                reference: r.to_string(),
                detail: format!(
                    "a layer has media type {t}, not a file system layer; give a container image"
                ),
            });
        }
    }
    Ok(())
}

pub(crate) fn parse_config(
    r: &dyn std::fmt::Display,
    bytes: &[u8],
) -> Result<oci_spec::image::ImageConfiguration> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Unsupported {
        reference: r.to_string(),
        detail: format!("its image config cannot be read ({e})"),
    })
}

pub(crate) fn config_platform(c: &oci_spec::image::ImageConfiguration) -> String {
    let mut s = format!("{}/{}", c.os(), c.architecture());
    if let Some(v) = c.variant() {
        s.push('/');
        s.push_str(v);
    }
    s
}

pub(crate) fn unpack_error(r: &dyn std::fmt::Display, layer: &str, e: UnpackError) -> ImageError {
    match e {
        UnpackError::Write { path, source } => ImageError::disk("unpack into", path, source),
        UnpackError::Unsupported(detail) => ImageError::Unsupported {
            reference: r.to_string(),
            detail,
        },
        UnpackError::Read(e) => ImageError::BadLayer {
            reference: r.to_string(),
            detail: format!("layer {layer}: {e}"),
        },
        UnpackError::Malformed(m) => ImageError::BadLayer {
            reference: r.to_string(),
            detail: format!("layer {layer}: {m}"),
        },
    }
}

/// The blocking side of the download → unpack pipe.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    buf: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.buf = b,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod manifest_tests {
    use super::looks_like_manifest;

    #[test]
    fn only_manifests_and_indexes_pass() {
        let manifest = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(looks_like_manifest(manifest), Ok(()));
        assert_eq!(looks_like_manifest(index), Ok(()));
        assert_eq!(
            looks_like_manifest(b"<html>not json</html>"),
            Err("not JSON".into())
        );
        assert!(looks_like_manifest(br#"{"schemaVersion":1,"fsLayers":[]}"#).is_err());
        assert!(looks_like_manifest(br#"{"schemaVersion":2}"#).is_err());
    }
}
