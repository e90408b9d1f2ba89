//! `swarmlet node …`: list, inspect, promote, demote, remove and update the
//! swarm's nodes, as `docker node …` does.

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use swarmlet_proto::api::{NodeAvailabilityRequest, NodeRoleRequest, NodeView};
use swarmlet_proto::{Availability, NodeRole};

use super::format;
use crate::api::client::Client;

#[derive(Subcommand)]
pub enum NodeCommand {
    /// List the nodes of the swarm
    #[command(alias = "list")]
    Ls(format::ListArgs),
    /// Show one or more nodes in detail (JSON)
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make workers managers (raft voters once they have caught up)
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers
    Demote {
        /// Demote even if the managers left cannot form a quorum
        #[arg(long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the swarm
    #[command(alias = "remove")]
    Rm {
        /// Remove a node that is still up, or a manager whose loss breaks the quorum
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability
    Update(UpdateArgs),
}

#[derive(Args)]
pub struct UpdateArgs {
    /// active: takes tasks; pause: keeps its tasks, takes no new ones;
    /// drain: its tasks move to other nodes
    #[arg(long)]
    availability: AvailabilityArg,
    node: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum AvailabilityArg {
    Active,
    Pause,
    Drain,
}

pub async fn run(c: Client, cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Ls(a) => ls(c, a).await,
        NodeCommand::Inspect { nodes } => {
            let mut out = Vec::new();
            for n in nodes {
                let v: NodeView = c.get(&format!("/v1/nodes/{n}")).await?;
                out.push(v);
            }
            format::print_json(&out)
        }
        NodeCommand::Promote { nodes } => {
            for n in nodes {
                set_role(&c, &n, NodeRole::Manager, false).await?;
                println!("Node {n} promoted to a manager in the swarm.");
            }
            Ok(())
        }
        NodeCommand::Demote { force, nodes } => {
            for n in nodes {
                set_role(&c, &n, NodeRole::Worker, force).await?;
                println!("Manager {n} demoted in the swarm.");
            }
            Ok(())
        }
        NodeCommand::Rm { force, nodes } => {
            for n in nodes {
                let q = if force { "?force=true" } else { "" };
                c.delete::<serde_json::Value>(&format!("/v1/nodes/{n}{q}"))
                    .await
                    .with_context(|| format!("removing node {n}"))?;
                println!("{n}");
            }
            Ok(())
        }
        NodeCommand::Update(a) => {
            let availability = match a.availability {
                AvailabilityArg::Active => Availability::Active,
                AvailabilityArg::Pause => Availability::Pause,
                AvailabilityArg::Drain => Availability::Drain,
            };
            c.post::<_, serde_json::Value>(
                &format!("/v1/nodes/{}/availability", a.node),
                &NodeAvailabilityRequest { availability },
            )
            .await
            .with_context(|| format!("updating node {}", a.node))?;
            println!("{}", a.node);
            Ok(())
        }
    }
}

async fn set_role(c: &Client, node: &str, role: NodeRole, force: bool) -> anyhow::Result<()> {
    c.post::<_, serde_json::Value>(
        &format!("/v1/nodes/{node}/role"),
        &NodeRoleRequest { role, force },
    )
    .await
    .with_context(|| format!("changing the role of node {node}"))?;
    Ok(())
}

async fn ls(c: Client, a: format::ListArgs) -> anyhow::Result<()> {
    let nodes: Vec<NodeView> = c.get("/v1/nodes").await?;
    if a.json() {
        return format::print_json(&nodes);
    }
    if a.quiet {
        nodes.iter().for_each(|n| println!("{}", n.node.id));
        return Ok(());
    }
    let rows = nodes
        .iter()
        .map(|n| {
            vec![
                format!("{}{}", n.node.id, if n.is_self { " *" } else { "" }),
                n.node.hostname.clone(),
                n.status.clone(),
                n.node.availability.to_string(),
                n.manager_status.clone(),
                env!("CARGO_PKG_VERSION").to_string(),
            ]
        })
        .collect();
    format::print_table(
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "MANAGER STATUS",
            "ENGINE VERSION",
        ],
        rows,
    );
    Ok(())
}
