//! Images pulled from a real registry (Debian's `docker-registry`, plain
//! HTTP on a loopback address, as a user's local registry), with test images
//! built from small root filesystems by umoci and pushed by skopeo
//! (scripts/images/registry.sh). Layers are checked the way a container
//! sees them: the store's layer directories mounted with overlayfs.
//!
//! Needs root (whiteouts are device nodes; overlay mounts) and the tools
//! `docker-registry`, `skopeo`, `umoci`, `jq` (scripts/setup.sh installs
//! them). Without them the tests are skipped with a line on stderr, except
//! under `CI=true`, where that fails them.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use swarmlet::image::unpack::{is_opaque, is_whiteout};
use swarmlet::image::{
    import, ImageError, ImageRef, ImageStore, LayerState, Platform, Progress, Puller,
    RegistryOptions,
};

struct Registry {
    dir: PathBuf,
    addr: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The registry shared by this test binary, or None (skipped).
fn registry() -> Option<&'static Registry> {
    static REG: OnceLock<Option<Registry>> = OnceLock::new();
    REG.get_or_init(|| {
        let mut missing: Vec<String> = ["docker-registry", "skopeo", "umoci", "jq", "curl"]
            .iter()
            .filter(|t| {
                !Command::new("sh")
                    .args(["-c", &format!("command -v {t}")])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            })
            .map(|t| t.to_string())
            .collect();
        if unsafe { libc::geteuid() } != 0 {
            missing.push("root".into());
        }
        if !missing.is_empty() {
            assert!(
                !ci(),
                "image tests need {} (scripts/setup.sh installs the tools; CI must run the tests as root)",
                missing.join(", ")
            );
            eprintln!("SKIPPED: image tests need {}", missing.join(", "));
            return None;
        }
        // A free port on our loopback address, so a registry someone runs
        // by hand on :5000 does not collide.
        let port = std::net::TcpListener::bind("127.0.4.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.0.4.1")
            .port();
        let addr = format!("127.0.4.1:{port}");
        sweep_stale_registries();
        let dir = std::env::temp_dir().join(format!("swarmlet-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let script = repo().join("scripts/images/registry.sh");
        for args in [
            vec!["start".to_string(), dir.display().to_string(), addr.clone(), std::process::id().to_string()],
            vec!["images".to_string(), dir.display().to_string(), addr.clone()],
        ] {
            let out = Command::new(&script).args(&args).output().expect("run registry.sh");
            assert!(
                out.status.success(),
                "registry.sh {} failed: {}{}",
                args[0],
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(Registry { dir, addr })
    })
    .as_ref()
}

/// Removes the registry directories of test processes that are gone (the
/// registry itself stops with its test process; its storage stays behind).
fn sweep_stale_registries() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("swarmlet-registry-")
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A fresh data dir, removed (with anything mounted in it) when dropped.
struct DataDir(PathBuf);

impl DataDir {
    fn new(name: &str) -> DataDir {
        let p = std::env::temp_dir().join(format!(
            "swarmlet-images-{name}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&p).unwrap();
        DataDir(p)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn puller(data: &Path, platform: Option<&str>) -> Puller {
    let store = Arc::new(ImageStore::open(data).unwrap());
    let mut opts = RegistryOptions::default();
    if let Some(p) = platform {
        opts.platform = Platform::parse(p).unwrap();
    }
    Puller::new(store, opts).unwrap()
}

fn r(reg: &Registry, name: &str) -> ImageRef {
    ImageRef::parse(&format!("{}/{name}", reg.addr)).unwrap()
}

/// Collects progress events.
#[derive(Default)]
struct Events(Mutex<Vec<Progress>>);

impl Events {
    fn states(&self) -> Vec<(usize, LayerState)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|p| (p.index, p.state.clone()))
            .collect()
    }
}

/// An overlayfs mount of an image's layers (read-only), unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(layers: &[PathBuf], at: &Path) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        // overlayfs lists lower layers top first.
        let lower: Vec<String> = layers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        let out = Command::new("mount")
            .args([
                "-t",
                "overlay",
                "overlay",
                "-o",
                &format!("ro,lowerdir={}", lower.join(":")),
            ])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount overlay: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// What is left in the store's work and layer directories.
fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn pull_verifies_unpacks_with_whiteouts_and_keeps_the_config() {
    let Some(reg) = registry() else { return };
    let data = DataDir::new("pull");
    let p = puller(&data.0, Some("linux/amd64"));
    let web = r(reg, "web:v1");
    let events = Events::default();
    let info = p
        .pull(&web, &|e| events.0.lock().unwrap().push(e))
        .await
        .expect("pull web:v1");

    assert_eq!(info.names, vec![format!("{}/web:v1", reg.addr)]);
    assert_eq!(info.layers.len(), 2);
    assert_eq!(info.platform, "linux/amd64");
    let pinned = p.resolve(&web).await.expect("resolve");
    assert_eq!(
        info.repo_digests,
        vec![format!("{}/web@{pinned}", reg.addr)]
    );
    assert_eq!(info.config.entrypoint, vec!["/bin/tool"]);
    assert_eq!(info.config.cmd, vec!["--serve"]);
    assert!(
        info.config.env.contains(&"GREETING=hi".to_string()),
        "{:?}",
        info.config.env
    );
    assert_eq!(info.config.workdir.as_deref(), Some("/data"));
    assert_eq!(info.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(info.config.exposed_ports, vec!["8080/tcp"]);
    let states = events.states();
    for i in 0..2 {
        assert!(
            states.contains(&(i, LayerState::Complete)),
            "layer {i} completed: {states:?}"
        );
    }

    // The layers as stored: the second holds the whiteouts in overlay form.
    let store = p.store();
    let layers = store.rootfs_layers(&info).unwrap();
    assert!(
        is_whiteout(&layers[1].join("etc/gone.txt")),
        "etc/gone.txt is a whiteout in layer 2"
    );
    assert!(
        is_opaque(&layers[1].join("data")),
        "data/ is opaque in layer 2"
    );
    assert!(
        layers[0].join("etc/gone.txt").is_file(),
        "layer 1 is untouched"
    );

    // The root file system a container sees.
    let mnt = Mount::new(&layers, &data.0.join("mnt"));
    let root = &mnt.0;
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hello.txt")).unwrap(),
        "hello v2\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/keep.txt")).unwrap(),
        "kept\n"
    );
    assert!(
        !root.join("etc/gone.txt").exists(),
        "the whiteout hides etc/gone.txt"
    );
    let mut data_files = files_in(&root.join("data"));
    data_files.sort();
    assert_eq!(
        data_files,
        vec!["new.txt"],
        "the opaque directory hides the lower layer's files"
    );
    let tool = std::fs::symlink_metadata(root.join("bin/tool")).unwrap();
    assert_eq!((tool.uid(), tool.gid()), (1000, 1000));
    assert_eq!(tool.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(root.join("bin/tool-link")).unwrap(),
        PathBuf::from("tool")
    );
    let hard = std::fs::symlink_metadata(layers[0].join("bin/tool-hard")).unwrap();
    let orig = std::fs::symlink_metadata(layers[0].join("bin/tool")).unwrap();
    assert_eq!(hard.ino(), orig.ino(), "the hard link is one file");
    drop(mnt);

    // Pulled again, by the pinned digest: nothing to fetch.
    let again = Events::default();
    let by_digest = web.with_digest(&pinned);
    let info2 = p
        .pull(&by_digest, &|e| again.0.lock().unwrap().push(e))
        .await
        .expect("pull by digest");
    assert_eq!(info2.id, info.id);
    assert_eq!(
        again.states(),
        vec![
            (0, LayerState::AlreadyExists),
            (1, LayerState::AlreadyExists)
        ]
    );
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        store.get(&format!("{}/web:v1", reg.addr)).unwrap().id,
        info.id
    );
    assert!(
        files_in(&store.root().join("tmp")).is_empty(),
        "no work left in tmp/"
    );
}

#[tokio::test]
async fn a_manifest_list_is_resolved_to_the_node_platform() {
    let Some(reg) = registry() else { return };
    let data = DataDir::new("multi");
    let multi = r(reg, "multi:v1");
    let amd = puller(&data.0, Some("linux/amd64"));
    let a = amd
        .pull(&multi, &|_| {})
        .await
        .expect("pull multi as amd64");
    assert!(
        a.config.env.contains(&"VARIANT=amd64".to_string()),
        "{:?}",
        a.config.env
    );
    assert_eq!(a.platform, "linux/amd64");
    // The same store, as a Raspberry Pi would pull it.
    let pi = Puller::new(
        amd.store().clone(),
        RegistryOptions {
            platform: Platform::parse("linux/arm64").unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    let b = pi.pull(&multi, &|_| {}).await.expect("pull multi as arm64");
    assert!(
        b.config.env.contains(&"VARIANT=arm64".to_string()),
        "{:?}",
        b.config.env
    );
    assert_eq!(b.platform, "linux/arm64");
    assert_ne!(a.id, b.id);
    // Both pinned by the list's digest: one digest for every node.
    assert_eq!(a.repo_digests, b.repo_digests);
    assert_eq!(
        a.repo_digests,
        vec![format!(
            "{}/multi@{}",
            reg.addr,
            amd.resolve(&multi).await.unwrap()
        )]
    );
    assert_ne!(a.manifest_digest, b.manifest_digest);
    // The host's own platform is one of the two here.
    let host = Platform::host();
    if ["amd64", "arm64"].contains(&host.architecture.as_str()) {
        let h = puller(&DataDir::new("host").0, None)
            .pull(&multi, &|_| {})
            .await
            .unwrap();
        assert!(h
            .config
            .env
            .contains(&format!("VARIANT={}", host.architecture)));
    }
}

#[tokio::test]
async fn no_variant_for_this_platform_names_the_ones_there_are() {
    let Some(reg) = registry() else { return };
    let data = DataDir::new("armonly");
    let p = puller(&data.0, Some("linux/amd64"));
    let err = p.pull(&r(reg, "armonly:v1"), &|_| {}).await.unwrap_err();
    match &err {
        ImageError::NoMatchingPlatform {
            wanted, available, ..
        } => {
            assert_eq!(wanted, "linux/amd64");
            assert_eq!(available, "linux/arm64");
        }
        other => panic!("expected NoMatchingPlatform, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("use an image built for linux/amd64"),
        "{err}"
    );
    assert!(p.store().list().unwrap().is_empty());
    assert!(files_in(&p.store().root().join("layers/sha256")).is_empty());
}

#[tokio::test]
async fn unknown_tag_unknown_repository_and_unreachable_registry() {
    let Some(reg) = registry() else { return };
    let data = DataDir::new("unknown");
    let p = puller(&data.0, None);

    let err = p.pull(&r(reg, "web:nope"), &|_| {}).await.unwrap_err();
    assert!(matches!(err, ImageError::UnknownTag { .. }), "{err:?}");
    assert!(err.to_string().contains("web:nope"), "{err}");
    assert!(err.to_string().contains("the repository has: v1"), "{err}");
    let err = p.resolve(&r(reg, "web:nope")).await.unwrap_err();
    assert!(matches!(err, ImageError::UnknownTag { .. }), "{err:?}");

    let err = p.pull(&r(reg, "nosuchrepo:v1"), &|_| {}).await.unwrap_err();
    assert!(
        matches!(err, ImageError::UnknownRepository { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("nosuchrepo"), "{err}");

    // Nothing listens on port 1 of our loopback address.
    let gone = ImageRef::parse("127.0.4.1:1/web:v1").unwrap();
    let err = p.pull(&gone, &|_| {}).await.unwrap_err();
    match &err {
        ImageError::Unreachable { registry, .. } => assert_eq!(registry, "127.0.4.1:1"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(
        err.to_string().contains("is running and reachable"),
        "{err}"
    );
    assert!(p.store().list().unwrap().is_empty());
}

#[tokio::test]
async fn a_corrupted_layer_in_the_registry_is_refused_and_nothing_is_kept() {
    let Some(reg) = registry() else { return };
    let layer = std::fs::read_to_string(reg.dir.join("corrupt-layer")).unwrap();
    let hex = layer.trim().strip_prefix("sha256:").unwrap().to_string();
    let blob = reg
        .dir
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data");
    // Flip bytes in the middle of the stored blob (same length, so the
    // registry serves it as is).
    let mut bytes = std::fs::read(&blob).expect("the layer blob in the registry's storage");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&blob, &bytes).unwrap();

    let data = DataDir::new("corrupt");
    let p = puller(&data.0, Some("linux/amd64"));
    let err = p.pull(&r(reg, "corrupt:v1"), &|_| {}).await.unwrap_err();
    match &err {
        ImageError::DigestMismatch { expected, .. } => assert_eq!(expected, layer.trim()),
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(
        err.to_string().contains("push or save the image again"),
        "{err}"
    );
    let store = p.store();
    assert!(store.list().unwrap().is_empty());
    assert!(
        files_in(&store.root().join("layers/sha256")).is_empty(),
        "no layer kept"
    );
    assert!(
        files_in(&store.root().join("tmp")).is_empty(),
        "no work left in tmp/"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_docker_save_and_oci_archives_shares_layers_with_a_pull() {
    let Some(reg) = registry() else { return };
    let data = DataDir::new("import");
    let store = Arc::new(ImageStore::open(&data.0).unwrap());
    let host = Platform::parse("linux/amd64").unwrap();

    let events = Events::default();
    let push = |e| events.0.lock().unwrap().push(e);
    let imported = tokio::task::block_in_place(|| {
        import(&store, &reg.dir.join("web-docker.tar"), &host, &push)
    })
    .expect("import docker-archive");
    assert_eq!(imported.len(), 1);
    let img = &imported[0];
    assert_eq!(img.names, vec!["docker.io/imported/web:v1"]);
    assert_eq!(img.config.entrypoint, vec!["/bin/tool"]);
    let states = events.states();
    assert!(states.contains(&(1, LayerState::Complete)), "{states:?}");
    let layers = store.rootfs_layers(img).unwrap();
    assert!(is_whiteout(&layers[1].join("etc/gone.txt")));
    assert!(is_opaque(&layers[1].join("data")));

    // A pull of the same image reuses the imported layers: same diff-ids.
    let p = Puller::new(
        store.clone(),
        RegistryOptions {
            platform: host.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let again = Events::default();
    let pulled = p
        .pull(&r(reg, "web:v1"), &|e| again.0.lock().unwrap().push(e))
        .await
        .unwrap();
    assert_eq!(pulled.id, img.id, "same config, same image ID");
    assert_eq!(
        again.states(),
        vec![
            (0, LayerState::AlreadyExists),
            (1, LayerState::AlreadyExists)
        ]
    );
    let both = store.get("docker.io/imported/web:v1").unwrap();
    assert!(
        both.names.contains(&format!("{}/web:v1", reg.addr)),
        "{:?}",
        both.names
    );

    // An OCI layout archive, into a fresh store.
    let data2 = DataDir::new("import-oci");
    let store2 = ImageStore::open(&data2.0).unwrap();
    let oci = tokio::task::block_in_place(|| {
        import(&store2, &reg.dir.join("web-oci.tar"), &host, &|_| {})
    })
    .expect("import oci-archive");
    assert_eq!(oci.len(), 1);
    assert_eq!(oci[0].id, img.id);
    assert_eq!(oci[0].layers, img.layers);

    // Not an image archive.
    let junk = data.0.join("junk.tar");
    std::fs::write(&junk, b"not a tarball").unwrap();
    let err = import(&store2, &junk, &host, &|_| {}).unwrap_err();
    assert!(matches!(err, ImageError::BadArchive { .. }), "{err:?}");
    assert!(err.to_string().contains("docker save"), "{err}");
}

#[tokio::test]
async fn remove_refuses_an_image_in_use_and_collects_unused_layers() {
    let Some(reg) = registry() else { return };
    let data = DataDir::new("remove");
    let p = puller(&data.0, Some("linux/amd64"));
    let web = p.pull(&r(reg, "web:v1"), &|_| {}).await.unwrap();
    let multi = p.pull(&r(reg, "multi:v1"), &|_| {}).await.unwrap();
    let store = p.store();
    let name = format!("{}/web:v1", reg.addr);

    let pinned = web.repo_digests[0].rsplit_once('@').unwrap().1.to_string();
    let in_use: HashSet<String> = [pinned.clone()].into();
    let err = store.remove(&name, &in_use).unwrap_err();
    assert!(matches!(err, ImageError::InUse { .. }), "{err:?}");
    assert!(
        err.to_string().contains("remove or update the service"),
        "{err}"
    );
    assert!(store.get(&name).is_ok(), "still there");

    let removed = store.remove(&name, &HashSet::new()).unwrap();
    assert_eq!(removed.deleted.as_deref(), Some(web.id.as_str()));
    assert_eq!(removed.layers_deleted, 2);
    assert!(matches!(store.get(&name), Err(ImageError::NotFound { .. })));
    for l in &web.layers {
        assert!(!store.has_layer(l), "layer {l} deleted");
    }
    for l in &multi.layers {
        assert!(store.has_layer(l), "multi's layer {l} kept");
    }
    // By ID prefix, as Docker accepts.
    let short = &multi.id["sha256:".len().."sha256:".len() + 12];
    store.remove(short, &HashSet::new()).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(files_in(&store.root().join("layers/sha256")).is_empty());
    let err = store.remove(&name, &HashSet::new()).unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err:?}");
}
