//! What can go wrong with an image, one variant per cause a user can act on.
//! Every message says what happened and what to do about it.

use std::path::PathBuf;

/// An image operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The text is not an image reference.
    #[error("invalid image reference {input:?}: {reason}; write it as [REGISTRY[:PORT]/]NAME[:TAG][@sha256:DIGEST], e.g. nginx:1.27 or 127.0.0.1:5000/web:v1")]
    BadReference { input: String, reason: String },

    /// The registry has no repository of that name (or will not say so
    /// without credentials, as Docker Hub does).
    #[error("repository {repository} not found on {registry}: check the name (`nginx`, `myuser/app`, `REGISTRY/NAME`); a private repository needs credentials")]
    UnknownRepository {
        registry: String,
        repository: String,
    },

    /// The repository exists but has no manifest under that tag or digest.
    #[error("{reference}: {}{known}", unknown_manifest(.reference))]
    UnknownTag {
        reference: String,
        /// "; the repository has: v1, v2" when the registry said, else "".
        known: String,
    },

    /// The registry asked for credentials the node does not have, or
    /// refused them.
    #[error("{reference}: access denied by {registry} ({detail}); the repository may not exist, or needs credentials for this registry")]
    AccessDenied {
        reference: String,
        registry: String,
        detail: String,
    },

    /// No connection to the registry (refused, no route, DNS, TLS).
    #[error("registry {registry} is unreachable ({detail}); check that the address is right and the registry is running and reachable from this node{hint}")]
    Unreachable {
        registry: String,
        detail: String,
        /// Extra advice (e.g. about `--insecure-registry`), empty or
        /// starting with "; ".
        hint: String,
    },

    /// The registry took the connection but sent nothing back in time.
    #[error("registry {registry} accepted the connection but did not answer ({detail}); check that a working registry serves that address (its logs), then retry")]
    NoAnswer { registry: String, detail: String },

    /// The registry answered something this node does not accept.
    #[error("registry {registry} answered an error for {reference}: {detail}; try again, or check the registry's logs")]
    Registry {
        registry: String,
        reference: String,
        detail: String,
    },

    /// Content whose digest is not the one that names it: corrupted in the
    /// registry, in transit, or in an archive. Nothing of it was kept.
    #[error("{what} of {reference} does not match its digest (expected {expected}, got {actual}); the registry or archive holds corrupted data: push or save the image again, then retry")]
    DigestMismatch {
        reference: String,
        what: String,
        expected: String,
        actual: String,
    },

    /// The image has variants, none for this node's platform.
    #[error("{reference} has no variant for this node's platform {wanted} (it has: {available}); use an image built for {wanted}, or run the service on nodes of a platform it has")]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        available: String,
    },

    /// The image uses something this node cannot unpack or run.
    #[error("{reference}: {detail}")]
    Unsupported { reference: String, detail: String },

    /// A layer archive that cannot be unpacked safely.
    #[error("a layer of {reference} is malformed: {detail}; push or save the image again")]
    BadLayer { reference: String, detail: String },

    /// An archive given to `image import` that is neither `docker save`
    /// output nor an OCI layout.
    #[error("{path}: not an image archive ({detail}); give a tarball made by `docker save` or `skopeo copy ... docker-archive:FILE` / `oci-archive:FILE`")]
    BadArchive { path: PathBuf, detail: String },

    /// No image in the local store under that name.
    #[error("no image {reference} on this node; `swarmlet image ls` lists the images (one a service pulled is named by its digest, NAME@sha256:…, or by its IMAGE ID), `pull` or `import` brings one")]
    NotFound { reference: String },

    /// Removal refused: a task uses the image.
    #[error("image {reference} ({digest}) is used by a running task; remove or update the service that uses it first")]
    InUse { reference: String, digest: String },

    /// A file in the image store could not be read or written.
    #[error("image store: {op} {path}: {source}; {advice}")]
    Disk {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
        advice: &'static str,
    },
}

impl ImageError {
    /// A disk error with advice chosen from the OS error (full, permission,
    /// other).
    pub fn disk(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> ImageError {
        let advice = match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                "the disk is full: free space in the data directory (`swarmlet image rm` unused images), then retry"
            }
            Some(libc::EACCES) | Some(libc::EPERM) => {
                "permission denied: run the daemon as root (unpacking image layers creates device nodes and sets file owners)"
            }
            Some(libc::EROFS) => "the file system is read-only: give the daemon a writable data directory",
            _ => "check the data directory's disk and permissions",
        };
        ImageError::Disk {
            op,
            path: path.into(),
            source,
            advice,
        }
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// What a missing manifest means for this reference: a tag that is not
/// there, or a digest the repository does not hold.
fn unknown_manifest(reference: &str) -> &'static str {
    if reference.contains('@') {
        "the repository has no manifest with that digest; check the digest (`skopeo inspect docker://IMAGE` prints an image's), or name the image by its tag"
    } else {
        "no such tag in the registry; check the tag"
    }
}
