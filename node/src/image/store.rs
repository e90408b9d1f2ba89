//! The content-addressed image store under `DATA_DIR/images`:
//!
//! ```text
//! layers/sha256/<diff-id hex>/   one directory per layer, overlayfs lower-layer form
//! layers/size/<diff-id hex>      its unpacked size in bytes (written before the rename)
//! blobs/sha256/<hex>             manifests, indexes and configs, as fetched
//! images/<config hex>.json       one record per image: names, digests, layers, config
//! tmp/                           work in progress (emptied at open)
//! ```
//!
//! A layer is shared by every image that has it and by every task of those
//! images (they mount it read-only under their own upper directory). A
//! layer appears only whole: it is unpacked under `tmp/` and renamed into
//! place once both its digests were checked. An image record is written
//! (atomically) only after all its layers are in place, so a crash leaves
//! at worst unreferenced layers, which the next `remove` collects.
//!
//! Architecture invariant: only this file changes the directories above;
//! pull and import hand it checked content.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::error::{ImageError, Result};
use super::reference::ImageRef;

/// What a container needs from the image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=value`.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// `80/tcp`, sorted.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl ImageConfig {
    /// From the image config blob (OCI or Docker, the same JSON shape).
    pub fn from_oci(c: &oci_spec::image::ImageConfiguration) -> ImageConfig {
        let Some(cfg) = c.config() else {
            return ImageConfig::default();
        };
        let mut exposed_ports = cfg.exposed_ports().clone().unwrap_or_default();
        exposed_ports.sort();
        ImageConfig {
            entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
            cmd: cfg.cmd().clone().unwrap_or_default(),
            env: cfg.env().clone().unwrap_or_default(),
            workdir: cfg.working_dir().clone().filter(|w| !w.is_empty()),
            user: cfg.user().clone().filter(|u| !u.is_empty()),
            exposed_ports,
            stop_signal: cfg.stop_signal().clone(),
            labels: cfg
                .labels()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }
    }
}

/// One image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The image ID: the digest of its config (as Docker's).
    pub id: String,
    /// Names it is known by, `registry/repository:tag`.
    #[serde(default)]
    pub names: Vec<String>,
    /// `registry/repository@sha256:…` for each digest it was pulled by
    /// (an index digest when pulled through a manifest list): the form a
    /// service pins.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// The digest of the platform's image manifest (None for a
    /// `docker save` archive, which has none).
    #[serde(default)]
    pub manifest_digest: Option<String>,
    /// `linux/amd64`.
    pub platform: String,
    /// Diff-ids, bottom layer first.
    pub layers: Vec<String>,
    /// Unpacked bytes over all layers.
    pub size: u64,
    pub config: ImageConfig,
    /// The image's creation time as its config says (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
    /// Manifest, index and config blobs kept for this image.
    #[serde(default)]
    pub blobs: Vec<String>,
}

impl ImageInfo {
    /// Every digest a service could have pinned this image by.
    pub fn digests(&self) -> impl Iterator<Item = &str> {
        self.repo_digests
            .iter()
            .filter_map(|r| r.rsplit_once('@').map(|(_, d)| d))
            .chain(self.manifest_digest.as_deref())
            .chain(std::iter::once(self.id.as_str()))
    }

    /// Whether `target` (as given to `image rm` or a task) names this image.
    fn matches(&self, target: &Target) -> bool {
        match target {
            Target::Name(n) => self.names.iter().any(|x| x == n),
            Target::Digest { name, digest } => {
                self.repo_digests
                    .iter()
                    .any(|r| r == &format!("{name}@{digest}"))
                    || self.manifest_digest.as_deref() == Some(digest.as_str())
                    || self.id == *digest
            }
            Target::Id(prefix) => self
                .id
                .strip_prefix("sha256:")
                .is_some_and(|h| h.starts_with(prefix.as_str())),
        }
    }
}

/// How a user named an image.
enum Target {
    Name(String),
    Digest { name: String, digest: String },
    Id(String),
}

impl Target {
    fn parse(s: &str) -> Result<Target> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() >= 4
            && hex.len() <= 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Ok(Target::Id(hex.to_string()));
        }
        let r = ImageRef::parse(s)?;
        Ok(match r.digest() {
            Some(d) => Target::Digest {
                name: r.name(),
                digest: d.to_string(),
            },
            None => Target::Name(r.tagged_name().unwrap_or_else(|| r.name())),
        })
    }
}

/// What `remove` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Names taken off the image.
    pub untagged: Vec<String>,
    /// The image ID, if the image itself was deleted.
    pub deleted: Option<String>,
    /// Layers deleted because no image uses them any more.
    pub layers_deleted: usize,
}

/// The store. Cheap to share (`Arc`); safe to use from many tasks at once.
pub struct ImageStore {
    root: PathBuf,
    /// Serialises changes of the records and garbage collection.
    lock: Mutex<()>,
    /// Layers and blobs a pull or import is about to reference (digest →
    /// count): garbage collection leaves them alone.
    pins: Arc<Mutex<HashMap<String, usize>>>,
}

/// Layers kept from garbage collection while it lives.
pub struct LayerPins {
    pins: Arc<Mutex<HashMap<String, usize>>>,
    ids: Vec<String>,
}

impl Drop for LayerPins {
    fn drop(&mut self) {
        let mut p = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        for id in &self.ids {
            if let Some(n) = p.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    p.remove(id);
                }
            }
        }
    }
}

/// A directory under `tmp/`, removed when dropped unless it was moved
/// into the store.
pub struct TempDir(Option<PathBuf>);

impl TempDir {
    pub fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new("/nonexistent"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

fn hex_of(digest: &str) -> Result<&str> {
    match digest.split_once(':') {
        Some(("sha256", h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h),
        _ => Err(ImageError::Unsupported {
            reference: digest.to_string(),
            detail: "only sha256 digests are supported; push the image with sha256 digests".into(),
        }),
    }
}

impl ImageStore {
    /// Opens (creating) the store at `DATA_DIR/images` and clears work
    /// left in progress by a crash.
    pub fn open(data_dir: &Path) -> Result<ImageStore> {
        let root = data_dir.join("images");
        for d in [
            "layers/sha256",
            "layers/size",
            "blobs/sha256",
            "images",
            "tmp",
        ] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| ImageError::disk("create", &p, e))?;
        }
        let tmp = root.join("tmp");
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let _ =
                    std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
        Ok(ImageStore {
            root,
            lock: Mutex::new(()),
            pins: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a layer (overlayfs lower-layer form).
    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.root.join("layers/sha256").join(hex_of(diff_id)?))
    }

    pub fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_dir(diff_id).map(|d| d.is_dir()).unwrap_or(false)
    }

    /// The layer directories of `image`, bottom first; overlayfs wants
    /// them the other way round in `lowerdir=` (top first).
    pub fn rootfs_layers(&self, image: &ImageInfo) -> Result<Vec<PathBuf>> {
        image.layers.iter().map(|l| self.layer_dir(l)).collect()
    }

    /// A fresh empty directory under `tmp/`.
    pub fn temp_dir(&self) -> Result<TempDir> {
        let p = self
            .root
            .join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&p).map_err(|e| ImageError::disk("create", &p, e))?;
        Ok(TempDir(Some(p)))
    }

    /// Keeps these layers (diff-ids) and blobs (digests) from garbage
    /// collection until the guard drops.
    pub fn pin(&self, diff_ids: &[String]) -> LayerPins {
        let mut p = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        for id in diff_ids {
            *p.entry(id.clone()).or_default() += 1;
        }
        LayerPins {
            pins: self.pins.clone(),
            ids: diff_ids.to_vec(),
        }
    }

    /// Moves an unpacked, checked layer into place. Another pull of the
    /// same layer may have won the race: then this copy is dropped.
    pub fn commit_layer(&self, mut tmp: TempDir, diff_id: &str, size: u64) -> Result<()> {
        let dest = self.layer_dir(diff_id)?;
        let size_file = self.root.join("layers/size").join(hex_of(diff_id)?);
        crate::fsutil::write_atomic(&size_file, size.to_string().as_bytes())
            .map_err(|e| ImageError::disk("write", e.path, e.source))?;
        let Some(src) = tmp.0.take() else {
            return Ok(());
        };
        match std::fs::rename(&src, &dest) {
            Ok(()) => {
                let _ = crate::fsutil::sync_parent(&dest);
                Ok(())
            }
            Err(_) if dest.is_dir() => {
                let _ = std::fs::remove_dir_all(&src);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&src);
                Err(ImageError::disk("move into place", &dest, e))
            }
        }
    }

    /// The unpacked size of a layer in the store (0 if unknown).
    pub fn layer_size(&self, diff_id: &str) -> u64 {
        let Ok(h) = hex_of(diff_id) else { return 0 };
        std::fs::read_to_string(self.root.join("layers/size").join(h))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Keeps a manifest, index or config blob (already checked).
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let p = self.root.join("blobs/sha256").join(hex_of(digest)?);
        if p.exists() {
            return Ok(());
        }
        crate::fsutil::write_atomic(&p, bytes)
            .map_err(|e| ImageError::disk("write", e.path, e.source))
    }

    /// A kept blob.
    pub fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.root.join("blobs/sha256").join(hex_of(digest)?);
        std::fs::read(&p).map_err(|e| ImageError::disk("read", &p, e))
    }

    fn record_path(&self, id: &str) -> Result<PathBuf> {
        Ok(self
            .root
            .join("images")
            .join(format!("{}.json", hex_of(id)?)))
    }

    fn write_record(&self, info: &ImageInfo) -> Result<()> {
        let p = self.record_path(&info.id)?;
        let bytes = serde_json::to_vec_pretty(info).unwrap_or_default();
        crate::fsutil::write_atomic(&p, &bytes)
            .map_err(|e| ImageError::disk("write", e.path, e.source))
    }

    /// Records an image whose layers are all in place. Its names move to
    /// it from any other image (a tag points at one image), and a record of
    /// the same ID gains the new names and digests.
    pub fn save(&self, mut info: ImageInfo) -> Result<ImageInfo> {
        for l in &info.layers {
            if !self.has_layer(l) {
                return Err(ImageError::disk(
                    "find layer",
                    self.layer_dir(l)?,
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
        }
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        for mut other in self.list()? {
            if other.id == info.id {
                for n in other.names.drain(..) {
                    if !info.names.contains(&n) {
                        info.names.push(n);
                    }
                }
                for d in other.repo_digests.drain(..) {
                    if !info.repo_digests.contains(&d) {
                        info.repo_digests.push(d);
                    }
                }
                for b in other.blobs.drain(..) {
                    if !info.blobs.contains(&b) {
                        info.blobs.push(b);
                    }
                }
                if info.manifest_digest.is_none() {
                    info.manifest_digest = other.manifest_digest.take();
                }
                continue;
            }
            let before = other.names.len();
            other.names.retain(|n| !info.names.contains(n));
            if other.names.len() != before {
                self.write_record(&other)?;
            }
        }
        info.names.sort();
        info.repo_digests.sort();
        self.write_record(&info)?;
        Ok(info)
    }

    /// Every image in the store, by ID.
    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        let dir = self.root.join("images");
        let rd = std::fs::read_dir(&dir).map_err(|e| ImageError::disk("read", &dir, e))?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&p).map_err(|e| ImageError::disk("read", &p, e))?;
            match serde_json::from_slice::<ImageInfo>(&bytes) {
                Ok(i) => out.push(i),
                Err(e) => {
                    tracing::warn!(path = %p.display(), "skipping a damaged image record: {e}")
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The image `reference` names: `name:tag`, `name@digest`, or an image
    /// ID (or a unique prefix of its hex, as Docker accepts).
    pub fn get(&self, reference: &str) -> Result<ImageInfo> {
        let target = Target::parse(reference)?;
        let mut found: Vec<ImageInfo> = self
            .list()?
            .into_iter()
            .filter(|i| i.matches(&target))
            .collect();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(ImageError::NotFound {
                reference: reference.to_string(),
            }),
            _ => Err(ImageError::BadReference {
                input: reference.to_string(),
                reason: "that ID prefix names more than one image; give more of it".into(),
            }),
        }
    }

    /// `image rm`: a name is taken off its image; the image is deleted with
    /// its last name, or at once when named by digest or ID. An image whose
    /// digests meet `in_use` (the digests running tasks were started from)
    /// is not deleted. Layers no image uses any more are deleted.
    pub fn remove(&self, reference: &str, in_use: &HashSet<String>) -> Result<Removed> {
        let target = Target::parse(reference)?;
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let all = self.list()?;
        let mut found: Vec<&ImageInfo> = all.iter().filter(|i| i.matches(&target)).collect();
        if found.len() != 1 {
            return Err(if found.is_empty() {
                ImageError::NotFound {
                    reference: reference.to_string(),
                }
            } else {
                ImageError::BadReference {
                    input: reference.to_string(),
                    reason: "that ID prefix names more than one image; give more of it".into(),
                }
            });
        }
        let mut image = found.remove(0).clone();
        let mut untagged = Vec::new();
        if let Target::Name(n) = &target {
            if image.names.len() > 1 {
                image.names.retain(|x| x != n);
                self.write_record(&image)?;
                return Ok(Removed {
                    untagged: vec![n.clone()],
                    deleted: None,
                    layers_deleted: 0,
                });
            }
        }
        if let Some(d) = image.digests().find(|d| in_use.contains(*d)) {
            return Err(ImageError::InUse {
                reference: reference.to_string(),
                digest: d.to_string(),
            });
        }
        untagged.append(&mut image.names);
        let p = self.record_path(&image.id)?;
        std::fs::remove_file(&p).map_err(|e| ImageError::disk("remove", &p, e))?;
        let _ = crate::fsutil::sync_parent(&p);
        let layers_deleted = self.collect()?;
        Ok(Removed {
            untagged,
            deleted: Some(image.id),
            layers_deleted,
        })
    }

    /// Deletes layers and blobs no record (and no pull in progress) uses.
    /// Called with `lock` held.
    fn collect(&self) -> Result<usize> {
        let images = self.list()?;
        let mut layers: HashSet<String> = images
            .iter()
            .flat_map(|i| i.layers.iter().cloned())
            .collect();
        layers.extend(
            self.pins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned(),
        );
        let blobs: HashSet<&str> = images
            .iter()
            .flat_map(|i| i.blobs.iter().map(String::as_str))
            .collect();
        let mut deleted = 0;
        let ldir = self.root.join("layers/sha256");
        let rd = std::fs::read_dir(&ldir).map_err(|e| ImageError::disk("read", &ldir, e))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if layers.contains(&format!("sha256:{name}")) {
                continue;
            }
            // Out of sight first (one rename), then deleted at leisure: a
            // half-deleted layer is never visible under its digest.
            let doomed = self.root.join("tmp").join(format!("gc-{name}"));
            if std::fs::rename(e.path(), &doomed).is_ok() {
                let _ = std::fs::remove_dir_all(&doomed);
                let _ = std::fs::remove_file(self.root.join("layers/size").join(&name));
                deleted += 1;
            }
        }
        let bdir = self.root.join("blobs/sha256");
        if let Ok(rd) = std::fs::read_dir(&bdir) {
            for e in rd.flatten() {
                let d = format!("sha256:{}", e.file_name().to_string_lossy());
                if !blobs.contains(d.as_str()) && !layers.contains(&d) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(deleted)
    }
}
