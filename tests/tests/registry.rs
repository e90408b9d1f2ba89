//! The harness's registry fixture (`swarmlet_e2e::registry`): its images
//! can be pulled from it by a real client (skopeo) as from any registry, and
//! they are what container tests rely on.

use std::process::Command;

use swarmlet_e2e::registry::{Registry, CRASH, NGINX, NOCMD};

/// `skopeo inspect --config` of `reference`: the image's config as JSON.
fn config(reg: &Registry, name: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--config", "--tls-verify=false"])
        .arg(format!("docker://{}", reg.image(name)))
        .output()
        .expect("run skopeo inspect");
    assert!(
        out.status.success(),
        "skopeo inspect {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("skopeo's config JSON")
}

fn cmd(config: &serde_json::Value) -> Vec<String> {
    config["config"]["Cmd"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_fixture_registry_serves_the_test_images() {
    let Some(reg) = Registry::start() else { return };
    assert!(reg.addr.starts_with("127.0.0.1:"), "{}", reg.addr);
    assert_eq!(
        Registry::start().map(|r| &r.addr),
        Some(&reg.addr),
        "one registry per test process"
    );

    let nginx = config(reg, NGINX);
    assert_eq!(cmd(&nginx), ["/usr/sbin/nginx", "-g", "daemon off;"]);
    assert!(
        nginx["config"]["ExposedPorts"]["80/tcp"].is_object(),
        "{nginx}"
    );
    assert_eq!(cmd(&config(reg, CRASH))[0], "/bin/sh");
    assert_eq!(cmd(&config(reg, NOCMD)), ["/usr/bin/does-not-exist"]);

    // Pulled whole, every digest checked by skopeo, as a user pulls it: the
    // layer holds nginx and its configuration.
    let dest = std::env::temp_dir().join(format!("swarmlet-e2e-pull-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dest);
    let out = Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{}", reg.image(NGINX)))
        .arg(format!("dir:{}", dest.display()))
        .output()
        .expect("run skopeo copy");
    assert!(
        out.status.success(),
        "skopeo copy (pull): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join("manifest.json")).expect("manifest"))
            .expect("manifest JSON");
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .and_then(|d| d.strip_prefix("sha256:"))
        .expect("a layer digest");
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(dest.join(layer))
        .output()
        .expect("run tar");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for path in ["./usr/sbin/nginx", "./etc/nginx/nginx.conf"] {
        assert!(
            listing.lines().any(|l| l == path),
            "{path} missing from the nginx layer"
        );
    }
    let _ = std::fs::remove_dir_all(&dest);
}

#[test]
fn the_crash_image_exits_1_at_once_and_nocmd_has_no_command() {
    let Some(reg) = Registry::start() else { return };
    // Run the images' commands the way a runtime would, in a chroot of the
    // unpacked layout (needs root; without it only the configs were checked
    // above).
    if unsafe { libc::geteuid() } != 0 {
        assert!(!swarmlet_e2e::ci(), "CI must run the e2e tests as root");
        eprintln!("SKIPPED: running the images' commands needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("swarmlet-e2e-unpack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("unpack dir");
    let run = |tag: &str| {
        let bundle = dir.join(tag);
        let out = Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{tag}", reg.layout.display()))
            .arg(&bundle)
            .output()
            .expect("run umoci unpack");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let spec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(bundle.join("config.json")).expect("bundle config"),
        )
        .expect("bundle config JSON");
        let args: Vec<String> = spec["process"]["args"]
            .as_array()
            .expect("process args")
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        Command::new("chroot")
            .arg(bundle.join("rootfs"))
            .args(&args)
            .output()
            .expect("run chroot")
    };
    let crash = run("crash");
    assert_eq!(crash.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&crash.stderr).contains("crash: exiting with code 1 at start"),
        "{}",
        String::from_utf8_lossy(&crash.stderr)
    );
    let nocmd = run("nocmd");
    assert_eq!(
        nocmd.status.code(),
        Some(127),
        "chroot says the command is missing: {}",
        String::from_utf8_lossy(&nocmd.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
