//! `swarmlet service …`

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use swarmlet_proto::api::*;
use swarmlet_proto::{DesiredState, TaskState};

use super::format::{self, ago, print_table, ListArgs};
use crate::api::client::Client;
use crate::orchestrator::now_ms;

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Create a new service from an OCI image (nginx:1.27) or a
    /// wasi:http/proxy component (a .wasm file)
    Create(CreateArgs),
    /// List services
    #[command(alias = "list")]
    Ls(ListArgs),
    /// List the tasks of a service
    Ps {
        #[arg(value_parser = ServiceKey)]
        service: String,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Display detailed information on one or more services
    Inspect {
        #[arg(value_parser = ServiceKey)]
        services: Vec<String>,
    },
    /// Scale one or more replicated services (SERVICE=REPLICAS …)
    Scale {
        #[arg(required = true, value_parser = parse_scale)]
        scales: Vec<(String, u64)>,
        /// Exit immediately instead of waiting for the service to converge
        #[arg(short, long)]
        detach: bool,
    },
    /// Remove one or more services
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true, value_parser = ServiceKey)]
        services: Vec<String>,
    },
    /// Fetch the output of a container service's tasks
    Logs {
        /// Follow the output (until Ctrl-C)
        #[arg(short, long)]
        follow: bool,
        /// Number of lines to show from the end of each task's log, or "all"
        #[arg(short = 'n', long, default_value = "all", value_parser = parse_tail)]
        tail: Tail,
        #[arg(value_parser = ServiceKey)]
        service: String,
    },
}

/// `--tail N|all` (a newtype: clap reads an `Option` field as an optional flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail(Option<usize>);

fn parse_tail(s: &str) -> Result<Tail, String> {
    if s == "all" {
        return Ok(Tail(None));
    }
    s.parse::<usize>()
        .map(|n| Tail(Some(n)))
        .map_err(|_| format!("--tail {s:?}: give a number of lines or \"all\""))
}

#[derive(Args)]
pub struct CreateArgs {
    /// Service name
    #[arg(long, value_parser = ServiceKey)]
    name: String,
    /// Number of tasks
    #[arg(long, default_value = "1", allow_negative_numbers = true, value_parser = parse_replicas)]
    replicas: u64,
    /// Publish a port: [PUBLISHED:]TARGET[/tcp] or published=P,target=T
    #[arg(short, long = "publish", value_parser = parse_publish)]
    publish: Vec<PortRequest>,
    /// Memory limit of each replica (its wasm instance, or its container's
    /// cgroup) (e.g. 64M, 1g, 1048576)
    #[arg(long, value_parser = parse_bytes)]
    limit_memory: Option<u64>,
    /// CPUs each container may use (e.g. 0.5, 2) [containers only]
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus)]
    limit_cpu: Option<u64>,
    /// Set an environment variable in the container: KEY=VALUE, or KEY to
    /// pass this shell's value (repeatable) [containers only]
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env_flag)]
    env: Vec<String>,
    /// Time a replica gets to stop after SIGTERM before it is killed
    /// (e.g. 10s, 500ms) [default: 10s]
    #[arg(long, value_parser = humantime::parse_duration)]
    stop_grace_period: Option<Duration>,
    /// Do not resolve the image reference to a digest in the registry: each
    /// node pulls the tag as it finds it then [containers only]
    #[arg(long)]
    no_resolve_image: bool,
    /// Let the guest make outgoing HTTP requests to this (repeatable):
    /// scheme://host[:port], `*` for any scheme, host or port, `*.example.com`
    /// for subdomains. Without it every outgoing request is denied [wasm only]
    #[arg(long = "allow-outbound", value_name = "PATTERN", value_parser = parse_allow_outbound)]
    allow_outbound: Vec<String>,
    /// Serve up to N requests, one after another, with one instance (state
    /// in the guest's memory is then shared between them). Default: a fresh
    /// instance per request [wasm only]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    instance_reuse: Option<u32>,
    /// Let one instance serve up to N requests at the same time (a WASIp3
    /// `wasi:http/service@0.3` component only; its memory is then shared
    /// between them). Default: 1. With it, an instance serves 128 requests
    /// in all unless --instance-reuse says otherwise [wasm only]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    instance_concurrency: Option<u32>,
    /// Most requests this service serves at once on a node; more wait
    /// briefly, then get 503 [default: 100] [wasm only]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_requests: Option<u32>,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    detach: bool,
    /// What to run: an OCI image reference (nginx:1.27,
    /// 127.0.0.1:5000/web:v1, NAME@sha256:…) or a path to a .wasm component
    image: String,
}

/// `--limit-cpu 0.5` → 500_000_000 billionths of a CPU (Docker's NanoCPUs).
pub fn parse_cpus(s: &str) -> Result<u64, String> {
    let n: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid CPU count {s:?}: give a number of CPUs, e.g. 0.5 or 2"))?;
    if !n.is_finite() || n <= 0.0 {
        return Err(format!(
            "--limit-cpu {s}: give more than 0 CPUs (e.g. 0.5), or leave it out for no limit"
        ));
    }
    if n > 1024.0 {
        return Err(format!("--limit-cpu {s}: at most 1024 CPUs"));
    }
    if n < 0.01 {
        return Err(format!(
            "--limit-cpu {s}: at least 0.01 CPUs (the kernel's smallest CPU quota)"
        ));
    }
    Ok(((n * 1e9).round() as u64).max(1))
}

/// `--env` as Docker takes it: KEY=VALUE or KEY, never an empty name.
fn parse_env_flag(s: &str) -> Result<String, String> {
    let key = s.split_once('=').map_or(s, |(k, _)| k);
    if key.trim().is_empty() {
        return Err(format!(
            "invalid environment variable {s:?}: write KEY=VALUE, or KEY to pass this shell's value"
        ));
    }
    Ok(s.to_string())
}

/// Docker's `--env KEY`: the value of KEY in this shell, left out when it
/// is not set there.
fn expand_env(entries: &[String], lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                lookup(e).map(|v| format!("{e}={v}"))
            }
        })
        .collect()
}

/// What `service create` was given to run.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Wasm(PathBuf),
    Image(String),
}

/// An existing `.wasm` file is a component; a path-like argument that is
/// no file is an error about the file; anything else must parse as an
/// image reference.
fn target(arg: &str) -> anyhow::Result<Target> {
    let path = std::path::Path::new(arg);
    let wasm_ext = path.extension().is_some_and(|e| e == "wasm");
    if path.is_file() && wasm_ext {
        return Ok(Target::Wasm(path.to_path_buf()));
    }
    if wasm_ext {
        bail!("cannot read {arg}: no such file (a .wasm component is given as a path to its file)");
    }
    if path.is_file() {
        bail!("{arg} is a file but not a .wasm component; give a wasi:http/proxy component (FILE.wasm), or an image reference such as nginx:1.27");
    }
    match crate::image::ImageRef::parse(arg) {
        Ok(_) => Ok(Target::Image(arg.to_string())),
        Err(e) => bail!("{arg:?} is neither a .wasm file here nor an image reference: {e}"),
    }
}

fn parse_allow_outbound(s: &str) -> Result<String, String> {
    crate::runtime::wasm::EgressPolicy::parse(&[s.to_string()])
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_replicas(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map_err(|_| format!("replicas must be a whole number of 0 or more, not {s:?}"))
}

/// Docker's memory sizes: a number with an optional unit b, k, m, g (also
/// kb/kib, …), case-insensitive, in powers of 1024.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => {
            return Err(format!(
                "invalid size {s:?}: use a number with b, k, m, g or t, e.g. 64m"
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: use a number with b, k, m, g or t, e.g. 64m"))?;
    Ok((n * (1u64 << shift) as f64) as u64)
}

fn parse_port(what: &str, s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "invalid {what} port {s:?}: a port is a number from 1 to 65535"
        )),
    }
}

pub fn parse_publish(s: &str) -> Result<PortRequest, String> {
    if s.contains('=') {
        let (mut published, mut target) = (None, None);
        for kv in s.split(',') {
            match kv.split_once('=') {
                Some(("published", v)) => published = Some(parse_port("published", v)?),
                Some(("target", v)) => target = Some(parse_port("target", v)?),
                Some(("protocol", "tcp")) | Some(("mode", "ingress")) => {}
                _ => {
                    return Err(format!(
                        "invalid publish option {kv:?}: use published=P,target=T"
                    ))
                }
            }
        }
        let target = target.ok_or("publish needs a target port: published=P,target=T")?;
        return Ok(PortRequest { published, target });
    }
    let s = s.strip_suffix("/tcp").unwrap_or(s);
    if s.ends_with("/udp") {
        return Err("UDP ports are not supported yet; publish TCP ports".into());
    }
    match s.split_once(':') {
        Some((p, t)) => Ok(PortRequest {
            published: Some(parse_port("published", p)?),
            target: parse_port("target", t)?,
        }),
        None => Ok(PortRequest {
            published: None,
            target: parse_port("target", s)?,
        }),
    }
}

fn parse_scale(s: &str) -> Result<(String, u64), String> {
    let (name, n) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid scale specifier {s:?}: expected SERVICE=REPLICAS"))?;
    if name.is_empty() {
        return Err(format!(
            "invalid scale specifier {s:?}: expected SERVICE=REPLICAS"
        ));
    }
    if !swarmlet_proto::valid_service_name(name) {
        return Err(format!(
            "invalid service name {name:?}: {}",
            swarmlet_proto::SERVICE_NAME_RULE
        ));
    }
    Ok((name.to_string(), parse_replicas(n)?))
}

/// A service name or ID on the command line, checked before anything is
/// sent: a name no service can have (not UTF-8, or with '/' or spaces,
/// which would change the request's URL) gets a clear error at once, and
/// `create` uploads nothing for it.
#[derive(Clone)]
struct ServiceKey;

impl clap::builder::TypedValueParser for ServiceKey {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let message = match value.to_str() {
            Some(s) if swarmlet_proto::valid_service_name(s) => return Ok(s.to_string()),
            Some(s) => format!("invalid service name {s:?}"),
            None => format!(
                "invalid service name {:?}: it is not valid UTF-8",
                value.to_string_lossy()
            ),
        };
        Err(clap::Error::raw(
            clap::error::ErrorKind::ValueValidation,
            format!("{message}: {}\n", swarmlet_proto::SERVICE_NAME_RULE),
        )
        .with_cmd(cmd))
    }
}

pub async fn run(c: Client, cmd: ServiceCommand) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::Create(a) => create(&c, a).await,
        ServiceCommand::Ls(a) => ls(&c, a).await,
        ServiceCommand::Ps { service, list } => ps(&c, &service, list).await,
        ServiceCommand::Inspect { services } => {
            let mut out = Vec::new();
            for s in services {
                let v: ServiceView = c.get(&format!("/v1/services/{s}")).await?;
                out.push(v);
            }
            format::print_json(&out)
        }
        ServiceCommand::Scale { scales, detach } => {
            for (name, replicas) in scales {
                let v: ServiceView = c
                    .post(
                        &format!("/v1/services/{name}/scale"),
                        &ScaleRequest { replicas },
                    )
                    .await?;
                println!("{name} scaled to {replicas}");
                if !detach {
                    converge(&c, &v.service.id).await?;
                }
            }
            Ok(())
        }
        ServiceCommand::Logs {
            follow,
            tail,
            service,
        } => logs(&c, &service, follow, tail).await,
        ServiceCommand::Rm { services } => {
            let mut failed = false;
            for s in services {
                match c
                    .delete::<serde_json::Value>(&format!("/v1/services/{s}"))
                    .await
                {
                    Ok(_) => println!("{s}"),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("some services could not be removed");
            }
            Ok(())
        }
    }
}

async fn create(c: &Client, a: CreateArgs) -> anyhow::Result<()> {
    let target = target(&a.image)?;
    let mut req = CreateServiceRequest {
        name: a.name,
        replicas: a.replicas,
        ports: a.publish,
        limit_memory: a.limit_memory,
        allow_outbound: a.allow_outbound,
        instance_reuse: a.instance_reuse,
        instance_concurrency: a.instance_concurrency,
        max_concurrent_requests: a.max_concurrent_requests,
        env: expand_env(&a.env, |k| std::env::var(k).ok()),
        limit_nano_cpus: a.limit_cpu,
        stop_grace_period_ms: a.stop_grace_period.map(|d| d.as_millis() as u64),
        no_resolve_image: a.no_resolve_image,
        ..Default::default()
    };
    match target {
        Target::Image(reference) => {
            // Refused here too (the manager checks again), before any request.
            let wasm_only = [
                (!req.allow_outbound.is_empty(), "--allow-outbound"),
                (req.instance_reuse.is_some(), "--instance-reuse"),
                (req.instance_concurrency.is_some(), "--instance-concurrency"),
                (
                    req.max_concurrent_requests.is_some(),
                    "--max-concurrent-requests",
                ),
            ];
            if let Some((_, flag)) = wasm_only.iter().find(|(set, _)| *set) {
                bail!("{flag} applies to wasm services only, and {reference} is a container image; leave {flag} out");
            }
            req.image = Some(reference);
        }
        Target::Wasm(path) => {
            let container_only = [
                (!a.env.is_empty(), "--env"),
                (req.limit_nano_cpus.is_some(), "--limit-cpu"),
                (req.no_resolve_image, "--no-resolve-image"),
            ];
            if let Some((_, flag)) = container_only.iter().find(|(set, _)| *set) {
                bail!("{flag} applies to container services only, and {} is a wasm component; leave {flag} out", path.display());
            }
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let blob: BlobResponse = c
                .post_bytes("/v1/blobs", bytes)
                .await
                .context("uploading the component")?;
            req.wasm_digest = blob.digest;
            req.wasm_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "component.wasm".into());
        }
    }
    let v: ServiceView = c.post("/v1/services", &req).await?;
    println!("{}", v.service.id);
    if !a.detach {
        converge(c, &v.service.id).await?;
    }
    Ok(())
}

/// `service logs`: the manager's merged stream, written as it arrives.
async fn logs(c: &Client, service: &str, follow: bool, tail: Tail) -> anyhow::Result<()> {
    use http_body_util::BodyExt as _;
    let tail = tail
        .0
        .map(|n| n.to_string())
        .unwrap_or_else(|| "all".into());
    let path = format!(
        "/v1/services/{service}/logs?tail={tail}&follow={}",
        u8::from(follow)
    );
    let empty = http_body_util::Full::new(bytes::Bytes::new())
        .map_err(|never| match never {})
        .boxed();
    let mut body = c
        .stream(http::Method::GET, &path, empty, "application/json")
        .await?;
    let mut out = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the log stream broke off")?;
        if let Ok(data) = frame.into_data() {
            // A reader that went away (`| head`) ends the command quietly.
            if out.write_all(&data).and_then(|_| out.flush()).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Docker's progress bar: how far along the task lifecycle a state is.
fn bar(state: TaskState) -> String {
    let step = match state {
        TaskState::New => 1,
        TaskState::Assigned => 4,
        TaskState::Starting => 8,
        TaskState::Running => 9,
        _ => 0,
    };
    if step == 0 {
        return String::new();
    }
    let filled: usize = 50 * step / 9;
    format!("[{}>{}]", "=".repeat(filled), " ".repeat(50 - filled))
}

/// Waits until the service runs exactly its replica count, drawing docker's
/// progress display (redrawn in place on a terminal, printed once otherwise).
async fn converge(c: &Client, id: &str) -> anyhow::Result<()> {
    const GIVE_UP: Duration = Duration::from_secs(120);
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut drawn = 0usize;
    let mut version: Option<u64> = None;
    loop {
        // Long poll: returns as soon as anything changed since `version`.
        let path = match version {
            Some(v) => format!("/v1/services/{id}/status?wait={v}"),
            None => format!("/v1/services/{id}/status"),
        };
        let status: ServiceStatus = c.get(&path).await?;
        version = Some(status.version);
        // As docker's progress display: tasks on a Down node are not waited
        // for (they cannot report stopping; their slots run elsewhere).
        let down: std::collections::HashSet<String> = c
            .get::<Vec<NodeView>>("/v1/nodes")
            .await
            .map(|nodes| {
                nodes
                    .into_iter()
                    .filter(|n| n.status == "Down")
                    .map(|n| n.node.id)
                    .collect()
            })
            .unwrap_or_default();
        let on_live_node =
            |t: &&TaskView| t.task.node_id.as_ref().is_none_or(|n| !down.contains(n));
        let (svc, tasks) = (status.service, status.tasks);
        let desired = svc.service.spec.replicas;
        let mut lines = Vec::new();
        let mut running = 0;
        for slot in 1..=desired {
            let latest = tasks
                .iter()
                .find(|t| t.task.slot == slot && t.task.desired_state == DesiredState::Running);
            let latest = latest.or_else(|| tasks.iter().find(|t| t.task.slot == slot));
            let line = match latest {
                Some(t)
                    if t.task.state == TaskState::Running
                        && t.task.desired_state == DesiredState::Running =>
                {
                    running += 1;
                    format!("{slot}/{desired}: running   {}", bar(TaskState::Running))
                }
                Some(t) if t.task.state.is_terminal() => format!(
                    "{slot}/{desired}: {}   {}",
                    t.task.state.as_str(),
                    t.task.error.clone().unwrap_or_default()
                ),
                Some(t) => format!(
                    "{slot}/{desired}: {:<9} {}",
                    t.task.state.as_str(),
                    bar(t.task.state)
                ),
                None => format!("{slot}/{desired}:"),
            };
            lines.push(line);
        }
        let stopping = tasks
            .iter()
            .filter(on_live_node)
            .filter(|t| {
                t.task.desired_state == DesiredState::Shutdown && !t.task.state.is_terminal()
            })
            .count();
        // Slots above the count whose tasks the orchestrator has not yet
        // told to stop (right after a scale-down): not converged either.
        let surplus = tasks
            .iter()
            .filter(on_live_node)
            .filter(|t| {
                t.task.slot > desired
                    && t.task.desired_state == DesiredState::Running
                    && !t.task.state.is_terminal()
            })
            .count();
        let done = running == desired && stopping == 0 && surplus == 0;
        let mut out = std::io::stdout().lock();
        if tty {
            if drawn > 0 {
                write!(out, "\x1b[{drawn}A")?;
            }
            writeln!(
                out,
                "\x1b[2Koverall progress: {running} out of {desired} tasks"
            )?;
            for l in &lines {
                writeln!(out, "\x1b[2K{l}")?;
            }
            drawn = lines.len() + 1;
        } else if done {
            writeln!(out, "overall progress: {running} out of {desired} tasks")?;
            for l in &lines {
                writeln!(out, "{l}")?;
            }
        }
        if done {
            writeln!(out, "verify: Service converged")?;
            return Ok(());
        }
        drop(out);
        if started.elapsed() > GIVE_UP {
            bail!(
                "service {} has {running} of {desired} tasks running after {GIVE_UP:?}; see \"swarmlet service ps {}\"",
                svc.service.spec.name,
                svc.service.spec.name
            );
        }
    }
}

async fn ls(c: &Client, a: ListArgs) -> anyhow::Result<()> {
    let services: Vec<ServiceView> = c.get("/v1/services").await?;
    if a.json() {
        return format::print_json(&services);
    }
    if a.quiet {
        services.iter().for_each(|s| println!("{}", s.service.id));
        return Ok(());
    }
    let rows = services
        .iter()
        .map(|v| {
            let s = &v.service;
            vec![
                s.id.chars().take(12).collect(),
                s.spec.name.clone(),
                "replicated".into(),
                format!("{}/{}", v.running, v.desired),
                s.spec.image.display_name().to_string(),
                s.spec
                    .ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    print_table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], rows);
    Ok(())
}

async fn ps(c: &Client, service: &str, a: ListArgs) -> anyhow::Result<()> {
    let tasks: Vec<TaskView> = c.get(&format!("/v1/services/{service}/tasks")).await?;
    if a.json() {
        return format::print_json(&tasks);
    }
    if a.quiet {
        tasks.iter().for_each(|t| println!("{}", t.task.id));
        return Ok(());
    }
    let now = now_ms();
    let mut last_slot = None;
    let rows = tasks
        .iter()
        .map(|v| {
            let t = &v.task;
            // Older tasks of a slot are shown as docker does: " \_ name.N".
            let name = if last_slot == Some(t.slot) {
                format!(" \\_ {}", t.display_name())
            } else {
                t.display_name()
            };
            last_slot = Some(t.slot);
            vec![
                t.id.chars().take(12).collect(),
                name,
                v.image.clone(),
                v.node_name.clone(),
                t.desired_state.to_string(),
                format!("{} {}", t.state, ago(t.updated_at_ms, now)),
                t.error
                    .clone()
                    .map(|e| format!("\"{e}\""))
                    .unwrap_or_default(),
                String::new(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "NAME",
            "IMAGE",
            "NODE",
            "DESIRED STATE",
            "CURRENT STATE",
            "ERROR",
            "PORTS",
        ],
        rows,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_forms() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!((p.published, p.target), (Some(8080), 80));
        let p = parse_publish("80").unwrap();
        assert_eq!((p.published, p.target), (None, 80));
        let p = parse_publish("published=81,target=8080").unwrap();
        assert_eq!((p.published, p.target), (Some(81), 8080));
        assert!(parse_publish("70000:80")
            .unwrap_err()
            .contains("1 to 65535"));
        assert!(parse_publish("0:80").is_err());
        assert!(parse_publish("x").is_err());
    }

    #[test]
    fn byte_sizes_as_docker_reads_them() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("10x").is_err());
    }

    #[test]
    fn cpus_as_docker_reads_them() {
        assert_eq!(parse_cpus("0.5").unwrap(), 500_000_000);
        assert!(parse_cpus("0.001").unwrap_err().contains("0.01"));
        assert_eq!(parse_bytes("1t").unwrap(), 1 << 40);
        assert!(parse_env_flag("").is_err());
        assert!(parse_env_flag("=x").is_err());
        assert_eq!(parse_env_flag("A=").unwrap(), "A=");
        assert_eq!(parse_cpus("2").unwrap(), 2_000_000_000);
        assert!(parse_cpus("0").unwrap_err().contains("more than 0"));
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("2000").unwrap_err().contains("1024"));
        assert!(parse_cpus("lots").is_err());
    }

    #[test]
    fn env_key_alone_takes_the_shells_value() {
        let got = expand_env(&["A=1".into(), "HOME".into(), "UNSET".into()], |k| {
            (k == "HOME").then(|| "/root".to_string())
        });
        assert_eq!(got, vec!["A=1".to_string(), "HOME=/root".to_string()]);
    }

    #[test]
    fn a_wasm_file_or_an_image_reference() {
        let dir = std::env::temp_dir().join(format!("swarmlet-cli-target-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let wasm = dir.join("x.wasm");
        std::fs::write(&wasm, b"\0asm").unwrap();
        let other = dir.join("notes.txt");
        std::fs::write(&other, b"hi").unwrap();
        let w = wasm.to_str().unwrap();
        assert_eq!(target(w).unwrap(), Target::Wasm(wasm.clone()));
        assert_eq!(
            target("nginx:1.27").unwrap(),
            Target::Image("nginx:1.27".into())
        );
        assert_eq!(
            target("127.0.0.1:5000/web:v1").unwrap(),
            Target::Image("127.0.0.1:5000/web:v1".into())
        );
        let e = target("./missing.wasm").unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
        let e = target(other.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("not a .wasm component"), "{e}");
        let e = target("Not An Image!").unwrap_err().to_string();
        assert!(
            e.contains("neither a .wasm file here nor an image reference"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn scale_forms() {
        assert_eq!(parse_scale("web=5").unwrap(), ("web".to_string(), 5));
        assert!(parse_scale("web").is_err());
        assert!(parse_scale("web=-1").unwrap_err().contains("0 or more"));
    }
}
