//! Docker-like command line: `swarmlet daemon` runs the node; every other
//! command is a client of a daemon's API.

mod format;
mod image;
mod info;
mod join;
mod node;
mod service;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use swarmlet_proto::api::{InitRequest, InitResponse};

use crate::api::client::Client;
use crate::runtime::wasm::Isolation;

#[derive(Parser)]
#[command(
    name = "swarmlet",
    version,
    about = "Docker Swarm mode as one small binary for edge hardware"
)]
pub struct Cli {
    /// Daemon socket to talk to: unix:///path/to/swarmlet.sock (default: the
    /// local daemon's socket in the default data dir). Remote control
    /// (a manager's IP[:2377]) needs a client bundle: --tls DIR.
    #[arg(short = 'H', long = "host", env = "SWARMLET_HOST", global = true)]
    host: Option<String>,
    /// Talk to the manager at -H IP[:2377] over mutual TLS with the client
    /// bundle in DIR (from "swarmlet swarm ca --client-bundle DIR")
    #[arg(long = "tls", value_name = "DIR", env = "SWARMLET_TLS", global = true)]
    tls: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node process (what the systemd unit starts)
    Daemon(DaemonArgs),
    /// Create a new swarm with the local daemon as its first manager
    Init(InitArgs),
    /// Manage the swarm (`swarm init`)
    #[command(subcommand)]
    Swarm(SwarmCommand),
    /// Manage nodes
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Manage services
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Manage the images of this node
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Show how the node runs: identity, swarm, wasm isolation and allocator
    Info(info::InfoArgs),
    /// Compile a component for the daemon (it runs this itself)
    #[command(name = crate::runtime::wasm::CHILD_COMMAND, hide = true)]
    CompileComponent(CompileArgs),
    /// Join a swarm as a worker or manager (the token says which)
    Join(join::JoinArgs),
    /// Leave the swarm (a manager only with --force; demote it first)
    Leave(join::LeaveArgs),
}

#[derive(Args)]
struct CompileArgs {
    /// The daemon's engine settings (JSON)
    #[arg(long)]
    engine: String,
    /// Where to write the compiled artifact
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
enum SwarmCommand {
    /// Create a new swarm with the local daemon as its first manager
    Init(InitArgs),
    /// Join a swarm as a worker or manager (the token says which)
    Join(join::JoinArgs),
    /// Print (or --rotate) the token that lets a worker or manager join
    JoinToken(join::JoinTokenArgs),
    /// The cluster CA: write a client bundle for remote control
    Ca(join::CaArgs),
    /// Leave the swarm (a manager only with --force; demote it first)
    Leave(join::LeaveArgs),
}

#[derive(Args)]
struct InitArgs {
    /// Address other nodes reach this one at (IP or IP:PORT)
    #[arg(long)]
    advertise_addr: Option<String>,
}

#[derive(Args)]
pub struct DaemonArgs {
    /// Where the node keeps its identity, raft log and blobs
    #[arg(long, env = "SWARMLET_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Cluster port: node-to-node traffic (the client API is on the unix socket only)
    #[arg(long, default_value = "0.0.0.0:2377")]
    listen_addr: SocketAddr,
    /// Address other nodes reach this one at (IP or IP:PORT); the default
    /// for `init` (default: the listen address, or the machine's one IPv4 address)
    #[arg(long)]
    advertise_addr: Option<String>,
    /// Address published ports bind on
    #[arg(long, default_value = "0.0.0.0")]
    publish_addr: IpAddr,
    /// Node name shown by `node ls` (default: the hostname)
    #[arg(long)]
    node_name: Option<String>,
    /// Longest a wasm guest may take over one request (e.g. 30s, 500ms)
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    wasm_timeout: Duration,
    /// On SIGTERM, how long requests in flight may take to finish
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Open connections per listener (API socket, each published port); when
    /// full, the longest-idle connection makes room (default: from the fd limit, at most 1024)
    #[arg(long)]
    max_connections: Option<usize>,
    /// Largest .wasm upload accepted (e.g. 64m, 1g; docker's size syntax)
    #[arg(long, default_value = "64m", value_parser = service::parse_bytes)]
    max_upload_size: u64,
    /// How guests are isolated: guard-pages (wasmtime's default: guard
    /// pages, signals-based traps, Spectre mitigations) or no-guard-pages
    /// (trusted guests only: explicit bounds checks, no Spectre mitigations;
    /// faster instantiation)
    #[arg(long, default_value = "guard-pages")]
    wasm_isolation: Isolation,
    /// Most linear memory all wasm instances together may hold (e.g. 2g);
    /// requests beyond it wait briefly, then get 503 [default: half of MemTotal]
    #[arg(long, value_parser = service::parse_bytes)]
    instance_memory_budget: Option<u64>,
    /// The leader marks a node Down (and moves its replicas to other nodes)
    /// when it has not heard a heartbeat from it for this long; nodes send
    /// one every second (e.g. 3s, 500ms)
    #[arg(long, default_value = "3s", value_parser = parse_node_down_after)]
    node_down_after: Duration,
    /// Where gossip (membership, UDP) listens, IP:PORT; every node of a
    /// swarm must be reachable there by the others [default: the listen
    /// IP with port 7946; with a 0.0.0.0 listen address, 0.0.0.0:7946
    /// advertised on the advertise IP]
    #[arg(long)]
    gossip_addr: Option<SocketAddr>,
    /// A registry (HOST[:PORT]) this node may reach over plain HTTP or with
    /// an untrusted certificate (repeatable). Registries on 127.0.0.0/8
    /// need no entry, as with Docker
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
    /// The Linux bridge this node's containers are attached to (at most
    /// 15 characters; created if missing). Daemons sharing a host need one each
    #[arg(long, default_value = "swarmlet0", value_name = "NAME")]
    bridge: String,
    /// The containers' subnet: the bridge takes its first address, each
    /// container another (Docker's --bip; 10.219.0.1/16 and 10.219.0.0/16
    /// mean the same). Daemons sharing a host need one each
    #[arg(long, default_value = "10.219.0.0/16", value_name = "A.B.C.D/N", value_parser = parse_cidr)]
    bridge_cidr: (std::net::Ipv4Addr, u8),
}

/// `--bridge-cidr`: an IPv4 address and prefix length; the address may be
/// any in the subnet (Docker's `--bip` gives the gateway's).
fn parse_cidr(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let usage = || format!("{s:?} is not A.B.C.D/N (e.g. 10.219.0.0/16)");
    let (ip, len) = s.split_once('/').ok_or_else(usage)?;
    let ip: std::net::Ipv4Addr = ip.trim().parse().map_err(|_| usage())?;
    let len: u8 = len.trim().parse().map_err(|_| usage())?;
    if !(8..=30).contains(&len) {
        return Err(format!(
            "prefix /{len} in {s:?}: use /8 to /30 (room for a gateway and containers)"
        ));
    }
    let mask = u32::MAX << (32 - len);
    Ok((std::net::Ipv4Addr::from(u32::from(ip) & mask), len))
}

/// `--node-down-after`: a duration that leaves room for a few heartbeats.
fn parse_node_down_after(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err(format!(
            "{s} is too short: nodes could not send a heartbeat in time; use at least 100ms (default 3s)"
        ));
    }
    Ok(d)
}

impl Cli {
    /// Whether this is `swarmlet daemon` (the node process) rather than a client command.
    pub fn is_daemon(&self) -> bool {
        matches!(self.command, Command::Daemon(_))
    }
}

/// `/var/lib/swarmlet` for root, else `$XDG_DATA_HOME/swarmlet`.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/swarmlet");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("swarmlet")
}

fn client(host: Option<String>) -> anyhow::Result<Client> {
    if let Some(c) = join::tls_client(host.as_deref())? {
        return Ok(c);
    }
    let host = host.unwrap_or_else(|| {
        format!(
            "unix://{}",
            default_data_dir().join("swarmlet.sock").display()
        )
    });
    Ok(Client::new(&host)?)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    join::set_tls_dir(cli.tls.clone());
    match cli.command {
        Command::Daemon(a) => {
            crate::daemon::run(crate::daemon::DaemonConfig {
                data_dir: a.data_dir.unwrap_or_else(default_data_dir),
                listen_addr: a.listen_addr,
                advertise_addr: a.advertise_addr,
                publish_addr: a.publish_addr,
                node_name: a.node_name,
                wasm_timeout: a.wasm_timeout,
                shutdown_grace: a.shutdown_grace,
                max_connections: a.max_connections,
                max_upload_size: a.max_upload_size,
                wasm_isolation: a.wasm_isolation,
                instance_memory_budget: a.instance_memory_budget,
                node_down_after: a.node_down_after,
                gossip_addr: a.gossip_addr,
                insecure_registries: a.insecure_registries,
                bridge: a.bridge,
                bridge_cidr: a.bridge_cidr,
            })
            .await
        }
        Command::Init(a) | Command::Swarm(SwarmCommand::Init(a)) => {
            init(client(cli.host)?, a).await
        }
        Command::Node(c) => node::run(client(cli.host)?, c).await,
        Command::Service(c) => service::run(client(cli.host)?, c).await,
        Command::Image(c) => image::run(client(cli.host)?, c).await,
        Command::Info(a) => info::run(client(cli.host)?, a).await,
        Command::CompileComponent(a) => {
            std::process::exit(crate::runtime::wasm::child_main(&a.engine, &a.out))
        }
        Command::Join(a) | Command::Swarm(SwarmCommand::Join(a)) => {
            join::join(client(cli.host)?, a).await
        }
        Command::Swarm(SwarmCommand::JoinToken(a)) => join::join_token(client(cli.host)?, a).await,
        Command::Swarm(SwarmCommand::Ca(a)) => join::ca(client(cli.host)?, a).await,
        Command::Leave(a) | Command::Swarm(SwarmCommand::Leave(a)) => {
            join::leave(client(cli.host)?, a).await
        }
    }
}

async fn init(c: Client, a: InitArgs) -> anyhow::Result<()> {
    let r: InitResponse = c
        .post(
            "/v1/swarm/init",
            &InitRequest {
                advertise_addr: a.advertise_addr,
            },
        )
        .await
        .context("swarm init failed")?;
    println!(
        "Swarm initialized: current node ({}) is now a manager.",
        r.node_id
    );
    println!();
    println!(
        "Other nodes will reach it at {}. Deploy a service with:",
        r.manager_addr
    );
    println!();
    println!("    swarmlet service create --name hello --replicas 3 -p 8080:80 ./hello.wasm");
    println!();
    Ok(())
}
#[cfg(test)]
mod node_down_after_tests {
    use super::*;

    #[test]
    fn node_down_after_needs_room_for_heartbeats() {
        assert_eq!(parse_node_down_after("3s"), Ok(Duration::from_secs(3)));
        let err = parse_node_down_after("50ms").unwrap_err();
        assert!(err.contains("at least 100ms"), "{err}");
        assert!(parse_node_down_after("soon").is_err());
        let cli = Cli::try_parse_from(["swarmlet", "daemon", "--node-down-after", "1s"]);
        assert!(cli.is_ok());
    }

    #[test]
    fn every_command_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        for args in [
            &["swarmlet", "service", "logs", "-f", "--tail", "5", "web"][..],
            &["swarmlet", "service", "logs", "web"],
            &["swarmlet", "image", "ls"],
            &["swarmlet", "image", "rm", "a", "b"],
            &["swarmlet", "image", "import", "x.tar"],
            &["swarmlet", "image", "pull", "nginx:1.27"],
            &[
                "swarmlet",
                "service",
                "create",
                "--name",
                "web",
                "--env",
                "A=1",
                "--limit-cpu",
                "0.5",
                "--stop-grace-period",
                "3s",
                "--no-resolve-image",
                "nginx",
            ],
        ] {
            let cli = Cli::try_parse_from(args);
            assert!(cli.is_ok(), "{args:?}: {:?}", cli.err());
        }
        assert!(
            Cli::try_parse_from(["swarmlet", "service", "logs", "--tail", "x", "web"]).is_err()
        );
    }
}

#[cfg(test)]
mod bridge_cidr_tests {
    use super::parse_cidr;

    #[test]
    fn bridge_cidr_takes_a_network_or_a_gateway_address() {
        let net = (std::net::Ipv4Addr::new(10, 221, 0, 0), 16);
        assert_eq!(parse_cidr("10.221.0.0/16"), Ok(net));
        assert_eq!(parse_cidr("10.221.0.1/16"), Ok(net), "Docker's --bip form");
        for bad in [
            "10.221.0.0",
            "10.221.0.0/7",
            "10.221.0.0/31",
            "x/16",
            "10.221.0.0/a",
        ] {
            let e = parse_cidr(bad).expect_err(bad);
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
