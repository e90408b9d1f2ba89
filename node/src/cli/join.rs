//! `swarmlet join` / `swarm join`, `swarm join-token`, `swarm ca
//! --client-bundle`, and the `--tls DIR` client of a manager's cluster port.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use swarmlet_proto::cluster::{
    ClientBundle, JoinTokenResponse, SwarmJoinRequest, SwarmJoinResponse,
};
use swarmlet_proto::NodeRole;

use crate::api::client::Client;

#[derive(Args)]
pub struct JoinArgs {
    /// Token from "swarmlet swarm join-token worker|manager" on a manager
    #[arg(long)]
    token: String,
    /// A manager's cluster port: IP[:PORT] (default port 2377)
    remote_addr: String,
    /// Address other nodes reach this one at (IP or IP:PORT)
    #[arg(long)]
    advertise_addr: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Role {
    Worker,
    Manager,
}

#[derive(Args)]
pub struct JoinTokenArgs {
    /// Which token: worker or manager
    role: Role,
    /// Replace the token (the old one is refused from now on, as "rotated")
    #[arg(long)]
    rotate: bool,
    /// Print only the token
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
pub struct CaArgs {
    /// Write a client bundle (ca.pem, cert.pem, key.pem) into DIR, for
    /// "swarmlet -H MANAGER_IP --tls DIR ..." on an operator's machine
    #[arg(long, value_name = "DIR")]
    client_bundle: PathBuf,
}

static TLS_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Records `--tls DIR` / `SWARMLET_TLS` for `client_for`.
pub fn set_tls_dir(dir: Option<PathBuf>) {
    let _ = TLS_DIR.set(dir);
}

/// With `--tls DIR`: a client of the manager at `-H IP[:PORT]` over mutual
/// TLS. `None`: no `--tls` (or `-H unix://…`), the caller uses the socket.
pub fn tls_client(host: Option<&str>) -> anyhow::Result<Option<Client>> {
    let Some(Some(dir)) = TLS_DIR.get() else {
        return Ok(None);
    };
    match host {
        None => anyhow::bail!(
            "--tls {} needs the manager to talk to: -H MANAGER_IP[:2377] (or SWARMLET_HOST)",
            dir.display()
        ),
        Some(h) if h.starts_with("unix://") => Ok(None),
        Some(h) => Ok(Some(Client::with_tls(h, dir)?)),
    }
}

pub async fn join(c: Client, a: JoinArgs) -> anyhow::Result<()> {
    let r: SwarmJoinResponse = c
        .post(
            "/v1/swarm/join",
            &SwarmJoinRequest {
                token: a.token,
                remote_addr: a.remote_addr,
                advertise_addr: a.advertise_addr,
            },
        )
        .await
        .context("swarm join failed")?;
    match r.role {
        NodeRole::Worker => println!("This node joined a swarm as a worker."),
        NodeRole::Manager => println!("This node joined a swarm as a manager."),
    }
    Ok(())
}

pub async fn join_token(c: Client, a: JoinTokenArgs) -> anyhow::Result<()> {
    let role = match a.role {
        Role::Worker => "worker",
        Role::Manager => "manager",
    };
    let r: JoinTokenResponse = if a.rotate {
        c.post(&format!("/v1/swarm/join-token/{role}/rotate"), &())
            .await?
    } else {
        c.get(&format!("/v1/swarm/join-token/{role}")).await?
    };
    if a.quiet {
        println!("{}", r.token);
        return Ok(());
    }
    if a.rotate {
        println!("Successfully rotated {role} join token.");
        println!();
    }
    println!("To add a {role} to this swarm, run the following command:");
    println!();
    println!(
        "    swarmlet swarm join --token {} {}",
        r.token, r.manager_addr
    );
    println!();
    Ok(())
}

pub async fn ca(c: Client, a: CaArgs) -> anyhow::Result<()> {
    let b: ClientBundle = c.post("/v1/swarm/client-bundle", &()).await?;
    crate::pki::write_client_bundle(
        &a.client_bundle,
        &crate::pki::NodeCerts {
            ca_pem: b.ca_pem,
            cert_pem: b.cert_pem,
            key_pem: b.key_pem,
        },
    )?;
    println!(
        "Wrote a client bundle to {} (ca.pem, cert.pem, key.pem; keep key.pem secret).",
        a.client_bundle.display()
    );
    println!(
        "Use it with: swarmlet -H MANAGER_IP:2377 --tls {} service ls",
        a.client_bundle.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct LeaveArgs {
    /// Leave even as a manager (the swarm may lose its quorum; the last
    /// manager's leaving erases the swarm's state)
    #[arg(short, long)]
    force: bool,
}

/// `leave [--force]`: the daemon forgets the swarm and restarts as a new
/// node (a new node ID); this waits until the restarted daemon answers, so
/// the next command (e.g. `join`) finds it.
pub async fn leave(c: Client, a: LeaveArgs) -> anyhow::Result<()> {
    use swarmlet_proto::api::InfoResponse;
    let before: InfoResponse = c.get("/v1/info").await?;
    let q = if a.force { "?force=true" } else { "" };
    c.post::<_, serde_json::Value>(&format!("/v1/swarm/leave{q}"), &serde_json::json!({}))
        .await
        .context("leaving the swarm failed")?;
    for _ in 0..600 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let Ok(now) = c.get::<InfoResponse>("/v1/info").await {
            if now.node_id != before.node_id {
                println!("Node left the swarm.");
                return Ok(());
            }
        }
    }
    anyhow::bail!(
        "the node forgot the swarm but its daemon did not come back within a minute; check its log (journalctl -u swarmlet)"
    )
}
