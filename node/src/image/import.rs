//! `image import FILE.tar`, for nodes without a registry: a tarball made by
//! `docker save` (or `skopeo copy … docker-archive:FILE`) or an OCI image
//! layout in a tar (`skopeo copy … oci-archive:FILE`, `docker save` since
//! Docker 25). Every blob is checked against its digest and every layer
//! against the diff-id its config names, as for a pull.
//!
//! The tarball is read twice, never unpacked to disk as a whole: the first
//! pass keeps the small JSON files (manifests, configs, indexes), the
//! second streams each wanted layer entry straight into the unpacker.
//! Blocking: call it from `spawn_blocking`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path};

use oci_client::manifest::{OciImageManifest, OciManifest};
use serde::Deserialize;

use super::error::{ImageError, Result};
use super::platform::Platform;
use super::progress::{LayerState, Progress, ProgressFn};
use super::pull::{config_platform, parse_config, sha256, unpack_error};
use super::reference::ImageRef;
use super::store::{ImageConfig, ImageInfo, ImageStore};
use super::unpack;

/// Entries up to this size are kept in memory in the first pass (JSON).
const SMALL: u64 = 1024 * 1024;

/// `docker save`'s manifest.json, one element per image.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// An image found in the archive, before its layers are unpacked.
struct Found {
    names: Vec<String>,
    repo_digests: Vec<String>,
    manifest_digest: Option<String>,
    config_digest: String,
    config: oci_spec::image::ImageConfiguration,
    /// Archive entry of each layer, bottom first, with its diff-id and (OCI
    /// layout only) its blob digest.
    layers: Vec<(String, String, Option<String>)>,
    blobs: Vec<(String, Vec<u8>)>,
}

/// Imports every image of the archive at `path`; returns them as stored.
pub fn import(
    store: &ImageStore,
    path: &Path,
    platform: &Platform,
    progress: ProgressFn<'_>,
) -> Result<Vec<ImageInfo>> {
    let bad = |detail: String| ImageError::BadArchive {
        path: path.to_path_buf(),
        detail,
    };
    // Pass 1: the small files, and symlinks (docker save links layers it
    // stores once).
    let mut small: HashMap<String, Vec<u8>> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut file = open(path)?;
    {
        let mut archive = tar::Archive::new(&mut file);
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("not a tar archive: {e}")))?;
            let name = norm(&entry.path().map_err(|e| bad(e.to_string()))?);
            let kind = entry.header().entry_type();
            if kind.is_symlink() {
                if let Ok(Some(target)) = entry.link_name() {
                    let parent = Path::new(&name).parent().unwrap_or(Path::new(""));
                    links.insert(name.clone(), norm(&parent.join(target)));
                }
                continue;
            }
            if kind.is_file() && entry.header().size().unwrap_or(u64::MAX) <= SMALL {
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| bad(format!("reading {name}: {e}")))?;
                small.insert(name, buf);
            }
        }
    }
    let found = if let Some(m) = small.get("manifest.json") {
        docker_save(path, m, &small)?
    } else if small.contains_key("index.json") {
        oci_layout(path, &small, platform)?
    } else {
        return Err(bad(
            "it has neither manifest.json (docker save) nor index.json (OCI layout)".into(),
        ));
    };
    if found.is_empty() {
        return Err(bad("it holds no image".into()));
    }

    // Pass 2: the layers the store lacks, streamed into the unpacker.
    let mut pin_ids: Vec<String> = Vec::new();
    // Entry name → (diff-id, blob digest, index, count) of the first image
    // that names it.
    let mut wanted: HashMap<String, (String, Option<String>, usize, usize)> = HashMap::new();
    for f in &found {
        let count = f.layers.len();
        for (i, (entry, diff, blob)) in f.layers.iter().enumerate() {
            pin_ids.push(diff.clone());
            let entry = links.get(entry).cloned().unwrap_or_else(|| entry.clone());
            if store.has_layer(diff) {
                progress(Progress {
                    layer: blob.clone().unwrap_or_else(|| diff.clone()),
                    index: i,
                    count,
                    state: LayerState::AlreadyExists,
                });
                continue;
            }
            wanted
                .entry(entry)
                .or_insert((diff.clone(), blob.clone(), i, count));
        }
        pin_ids.extend(f.blobs.iter().map(|(d, _)| d.clone()));
    }
    let _pins = store.pin(&pin_ids);
    if !wanted.is_empty() {
        file = open(path)?;
        let mut archive = tar::Archive::new(&mut file);
        let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| bad(e.to_string()))?;
            let name = norm(&entry.path().map_err(|e| bad(e.to_string()))?);
            let Some((diff, blob, index, count)) = wanted.remove(&name) else {
                continue;
            };
            let shown = blob.clone().unwrap_or_else(|| diff.clone());
            progress(Progress {
                layer: shown.clone(),
                index,
                count,
                state: LayerState::Downloading {
                    done: 0,
                    total: entry.header().size().ok(),
                },
            });
            let tmp = store.temp_dir()?;
            let got = unpack::unpack_layer(entry, tmp.path())
                .map_err(|e| unpack_error(&path.display(), &name, e))?;
            if let Some(b) = &blob {
                if &got.blob_digest != b {
                    return Err(mismatch(
                        path,
                        &format!("layer {name}"),
                        b,
                        &got.blob_digest,
                    ));
                }
            }
            if got.diff_id != diff {
                return Err(mismatch(
                    path,
                    &format!("layer {name}"),
                    &diff,
                    &got.diff_id,
                ));
            }
            store.commit_layer(tmp, &diff, got.size)?;
            progress(Progress {
                layer: shown,
                index,
                count,
                state: LayerState::Complete,
            });
        }
        if let Some(missing) = wanted.keys().next() {
            return Err(bad(format!(
                "the layer {missing} its manifest names is not in it"
            )));
        }
    }

    let mut out = Vec::new();
    for f in found {
        for (d, b) in &f.blobs {
            store.put_blob(d, b)?;
        }
        let size = f.layers.iter().map(|(_, d, _)| store.layer_size(d)).sum();
        let info = ImageInfo {
            id: f.config_digest.clone(),
            names: f.names,
            repo_digests: f.repo_digests,
            manifest_digest: f.manifest_digest,
            platform: config_platform(&f.config),
            layers: f.layers.into_iter().map(|(_, d, _)| d).collect(),
            size,
            config: ImageConfig::from_oci(&f.config),
            created: f.config.created().clone(),
            blobs: f.blobs.into_iter().map(|(d, _)| d).collect(),
        };
        out.push(store.save(info)?);
    }
    Ok(out)
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::BadArchive {
            path: path.to_path_buf(),
            detail: "no such file".into(),
        },
        _ => ImageError::disk("open", path, e),
    })
}

fn mismatch(path: &Path, what: &str, expected: &str, actual: &str) -> ImageError {
    ImageError::DigestMismatch {
        reference: path.display().to_string(),
        what: what.to_string(),
        expected: expected.to_string(),
        actual: actual.to_string(),
    }
}

/// `./a/../b` → `b`, as a `/`-separated string.
fn norm(p: &Path) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.join("/")
}

/// A full name from `docker save`'s RepoTags or an annotation, normalised.
fn full_name(s: &str) -> Option<String> {
    ImageRef::parse(s).ok().and_then(|r| r.tagged_name())
}

fn docker_save(
    path: &Path,
    manifest: &[u8],
    small: &HashMap<String, Vec<u8>>,
) -> Result<Vec<Found>> {
    let bad = |detail: String| ImageError::BadArchive {
        path: path.to_path_buf(),
        detail,
    };
    let entries: Vec<SaveEntry> = serde_json::from_slice(manifest)
        .map_err(|e| bad(format!("manifest.json is not docker save's: {e}")))?;
    let mut out = Vec::new();
    for e in entries {
        let cname = norm(Path::new(&e.config));
        let bytes = small.get(&cname).ok_or_else(|| {
            bad(format!(
                "the config {cname} its manifest.json names is not in it"
            ))
        })?;
        let config_digest = sha256(bytes);
        // The config is named by its digest (`<hex>.json` or
        // `blobs/sha256/<hex>`): check it.
        let named = Path::new(&cname)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if named.len() == 64 && format!("sha256:{named}") != config_digest {
            return Err(mismatch(
                path,
                &format!("the config {cname}"),
                &format!("sha256:{named}"),
                &config_digest,
            ));
        }
        let config = parse_config(&path.display(), bytes)?;
        let diffs = config.rootfs().diff_ids().clone();
        if diffs.len() != e.layers.len() {
            return Err(bad(format!(
                "manifest.json lists {} layers for {cname} but its config {}",
                e.layers.len(),
                diffs.len()
            )));
        }
        out.push(Found {
            names: e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .filter_map(|t| full_name(t))
                .collect(),
            repo_digests: Vec::new(),
            manifest_digest: None,
            config_digest: config_digest.clone(),
            layers: e
                .layers
                .iter()
                .map(|l| norm(Path::new(l)))
                .zip(diffs)
                .map(|(l, d)| (l, d, None))
                .collect(),
            config,
            blobs: vec![(config_digest, bytes.clone())],
        });
    }
    Ok(out)
}

fn blob_name(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

fn oci_layout(
    path: &Path,
    small: &HashMap<String, Vec<u8>>,
    platform: &Platform,
) -> Result<Vec<Found>> {
    let bad = |detail: String| ImageError::BadArchive {
        path: path.to_path_buf(),
        detail,
    };
    // A blob from the archive, checked against its digest.
    let blob = |digest: &str| -> Result<Vec<u8>> {
        let name = blob_name(digest);
        let b = small
            .get(&name)
            .ok_or_else(|| bad(format!("the blob {digest} its index names is not in it")))?;
        let actual = sha256(b);
        if actual != digest {
            return Err(mismatch(path, &name, digest, &actual));
        }
        Ok(b.clone())
    };
    let index: oci_client::manifest::OciImageIndex =
        serde_json::from_slice(&small["index.json"])
            .map_err(|e| bad(format!("index.json is not an OCI index: {e}")))?;
    let mut out = Vec::new();
    for top in &index.manifests {
        let annotations = top.annotations.clone().unwrap_or_default();
        let name = annotations
            .get("io.containerd.image.name")
            .or_else(|| annotations.get("org.opencontainers.image.ref.name"))
            .and_then(|n| {
                if n.contains('/') || n.contains(':') {
                    full_name(n)
                } else {
                    None
                }
            });
        let top_bytes = blob(&top.digest)?;
        let mut blobs = vec![(top.digest.clone(), top_bytes.clone())];
        let parsed: OciManifest = serde_json::from_slice(&top_bytes)
            .map_err(|e| bad(format!("manifest {}: {e}", top.digest)))?;
        let (manifest, manifest_digest): (OciImageManifest, String) = match parsed {
            OciManifest::Image(m) => (m, top.digest.clone()),
            OciManifest::ImageIndex(ix) => {
                let chosen = platform.choose(&ix.manifests).map_err(|available| {
                    ImageError::NoMatchingPlatform {
                        reference: path.display().to_string(),
                        wanted: platform.to_string(),
                        available: available.join(", "),
                    }
                })?;
                let b = blob(&chosen)?;
                let m = match serde_json::from_slice::<OciManifest>(&b) {
                    Ok(OciManifest::Image(m)) => m,
                    _ => return Err(bad(format!("{chosen} is not an image manifest"))),
                };
                blobs.push((chosen.clone(), b));
                (m, chosen)
            }
        };
        let config_bytes = blob(&manifest.config.digest)?;
        let config = parse_config(&path.display(), &config_bytes)?;
        let diffs = config.rootfs().diff_ids().clone();
        if diffs.len() != manifest.layers.len() {
            return Err(bad(format!(
                "manifest {manifest_digest} lists {} layers but its config {}",
                manifest.layers.len(),
                diffs.len()
            )));
        }
        blobs.push((manifest.config.digest.clone(), config_bytes));
        out.push(Found {
            names: name.clone().into_iter().collect(),
            repo_digests: name
                .and_then(|n| ImageRef::parse(&n).ok())
                .map(|r| format!("{}@{}", r.name(), top.digest))
                .into_iter()
                .collect(),
            manifest_digest: Some(manifest_digest),
            config_digest: manifest.config.digest.clone(),
            layers: manifest
                .layers
                .iter()
                .zip(diffs)
                .map(|(l, d)| (blob_name(&l.digest), d, Some(l.digest.clone())))
                .collect(),
            config,
            blobs,
        });
    }
    Ok(out)
}
