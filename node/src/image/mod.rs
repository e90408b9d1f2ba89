//! OCI images: parse a reference as Docker does, resolve it to the digest
//! a service pins, pull it from a registry (or import a `docker save` / OCI
//! layout archive) into a content-addressed store of unpacked layers under
//! `DATA_DIR/images`, list and remove images.
//!
//! - `reference`: `nginx:1.27` → `docker.io/library/nginx:1.27`.
//! - `platform`: the node's `os/arch[/variant]`; choosing a manifest list entry.
//! - `pull`: the registry side (oci-client): resolve, pull, per-layer progress.
//! - `unpack`: one layer tar (plain or gzip) → a directory in overlayfs form.
//! - `store`: the on-disk store: layers by diff-id, image records, GC.
//! - `import`: archives from `docker save` / skopeo (docker-archive, OCI layout).
//! - `error`: one error per cause a user can act on.
//!
//! Nothing here knows about services or tasks: the caller tells `remove`
//! which digests running tasks use, and mounts `rootfs_layers` itself.

pub mod error;
pub mod import;
pub mod platform;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod store;
pub mod unpack;

pub use error::ImageError;
pub use import::import;
pub use platform::Platform;
pub use progress::{LayerState, Progress};
pub use pull::{Puller, RegistryOptions};
pub use reference::ImageRef;
pub use store::{ImageConfig, ImageInfo, ImageStore, Removed};
