//! The OCI bundle's `config.json`: what runc runs, built with `oci-spec`
//! from the runtime defaults (the same mounts, masked and read-only paths
//! as `runc spec`), then changed the way Docker does: its default
//! capability set (runc's three are too few for real images: nginx fails
//! on chown/setgid), no `no_new_privileges`, the node's open-files limit,
//! a writable root, the task ID as hostname, a network namespace made by
//! `network.rs`, a cgroup of our own and the service's limits.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Spec, UserBuilder,
};

use super::error::ContainerError;

/// Docker's default capabilities (moby `oci/caps/defaults.go`).
pub const DOCKER_DEFAULT_CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The CFS period the CPU limit is expressed in (Docker's `--cpus` uses the same).
const CPU_PERIOD_US: u64 = 100_000;

/// Everything `config.json` needs, resolved by the caller.
#[derive(Debug, Clone)]
pub struct BundleConfig<'a> {
    pub hostname: &'a str,
    pub args: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// `/run/netns/NAME`: the namespace the container joins.
    pub netns_path: &'a Path,
    /// `/swarmlet/<task id>` (relative to each cgroup hierarchy's root).
    pub cgroups_path: &'a str,
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
}

/// The spec for a bundle whose root filesystem is `BUNDLE/rootfs`.
pub fn build_spec(cfg: &BundleConfig<'_>) -> Result<Spec, ContainerError> {
    let err = |e: oci_spec::OciSpecError| ContainerError::Spec(e.to_string());
    let mut spec = Spec::default();
    spec.set_hostname(Some(cfg.hostname.to_string()));
    spec.set_root(Some(
        oci_spec::runtime::RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()
            .map_err(err)?,
    ));

    let mut env: Vec<String> = cfg.env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        );
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", cfg.hostname));
    }
    let caps: HashSet<Capability> = DOCKER_DEFAULT_CAPS.iter().copied().collect();
    let process = spec.process_mut().get_or_insert_with(Default::default);
    process.set_args(Some(cfg.args.to_vec()));
    process.set_env(Some(env));
    process.set_cwd(PathBuf::from(cfg.cwd));
    process.set_no_new_privileges(Some(false));
    process.set_user(
        UserBuilder::default()
            .uid(cfg.uid)
            .gid(cfg.gid)
            .additional_gids(cfg.additional_gids.clone())
            .build()
            .map_err(err)?,
    );
    // No rlimits: the container inherits the shim's (the node's), as
    // Docker's containers inherit containerd's; runc's default of 1024 open
    // files is too few for a proxy, and raising a hard limit from inside
    // needs CAP_SYS_RESOURCE, which containers do not have.
    process.set_rlimits(None);
    process.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            .build()
            .map_err(err)?,
    ));

    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_cgroups_path(Some(PathBuf::from(cfg.cgroups_path)));
    if let Some(namespaces) = linux.namespaces_mut() {
        for ns in namespaces.iter_mut() {
            if ns.typ() == LinuxNamespaceType::Network {
                ns.set_path(Some(cfg.netns_path.to_path_buf()));
            }
        }
    }
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(bytes) = cfg.memory_bytes {
        let limit = i64::try_from(bytes).map_err(|_| {
            ContainerError::InvalidLimit(format!("memory limit {bytes} is too large"))
        })?;
        // Only the memory limit: a swap limit needs swap accounting, which
        // cgroup v1 kernels often lack (runc would refuse the spec).
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .build()
                .map_err(err)?,
        );
    }
    if let Some(cpus) = cfg.cpus {
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(cpu_quota(cpus)?)
                .period(CPU_PERIOD_US)
                .build()
                .map_err(err)?,
        );
    }
    linux.set_resources(Some(resources.build().map_err(err)?));
    Ok(spec)
}

/// `--limit-cpu 0.5` → a CFS quota of 50 ms per 100 ms period.
pub fn cpu_quota(cpus: f64) -> Result<i64, ContainerError> {
    if !cpus.is_finite() || !(0.01..=1024.0).contains(&cpus) {
        return Err(ContainerError::InvalidLimit(format!(
            "a CPU limit of {cpus} is outside 0.01..=1024 CPUs"
        )));
    }
    Ok((cpus * CPU_PERIOD_US as f64).round() as i64)
}

/// Writes `BUNDLE/config.json`.
pub fn write_spec(bundle: &Path, spec: &Spec) -> Result<(), ContainerError> {
    let path = bundle.join("config.json");
    let json = serde_json::to_vec_pretty(spec).map_err(|e| ContainerError::Spec(e.to_string()))?;
    std::fs::write(&path, json).map_err(|e| ContainerError::io("writing", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg<'a>(args: &'a [String], netns: &'a Path) -> BundleConfig<'a> {
        BundleConfig {
            hostname: "task1",
            args,
            env: &[],
            cwd: "/",
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            netns_path: netns,
            cgroups_path: "/swarmlet/task1",
            memory_bytes: Some(64 << 20),
            cpus: Some(0.5),
        }
    }

    #[test]
    fn spec_has_docker_caps_hostname_netns_and_limits() {
        let args = vec!["/usr/sbin/nginx".to_string()];
        let netns = PathBuf::from("/run/netns/x");
        let spec = build_spec(&cfg(&args, &netns)).expect("spec");
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(json["hostname"], "task1");
        assert_eq!(json["root"]["readonly"], false);
        let bounding = json["process"]["capabilities"]["bounding"]
            .as_array()
            .expect("bounding caps");
        assert_eq!(bounding.len(), DOCKER_DEFAULT_CAPS.len());
        assert!(bounding.iter().any(|c| c == "CAP_SETGID"));
        assert!(json["process"]["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.starts_with("PATH="))));
        let net = json["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .find(|n| n["type"] == "network")
            .expect("a network namespace")
            .clone();
        assert_eq!(net["path"], "/run/netns/x");
        assert_eq!(json["linux"]["cgroupsPath"], "/swarmlet/task1");
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(json["linux"]["resources"]["cpu"]["period"], 100_000);
    }

    #[test]
    fn cpu_limit_out_of_range_is_refused() {
        assert!(cpu_quota(0.0).is_err());
        assert!(cpu_quota(f64::NAN).is_err());
        assert_eq!(cpu_quota(2.0).ok(), Some(200_000));
    }
}
