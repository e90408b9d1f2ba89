//! `swarmlet info`: what `docker info` shows for a node, plus how its wasm
//! engine isolates guests and where their instances' memory comes from.

use clap::Args;
use swarmlet_proto::api::{EngineInfo, InfoResponse};

use crate::api::client::Client;
use crate::runtime::wasm::gib;

#[derive(Args)]
pub struct InfoArgs {
    /// Output format: "text" (default) or "json"
    #[arg(long, default_value = "text")]
    format: String,
}

pub async fn run(c: Client, a: InfoArgs) -> anyhow::Result<()> {
    let info: InfoResponse = c.get("/v1/info").await?;
    if a.format == "json" {
        return super::format::print_json(&info);
    }
    print!("{}", render(&info));
    Ok(())
}

fn render(i: &InfoResponse) -> String {
    let mut out = format!("Node ID: {}\nName: {}\n", i.node_id, i.hostname);
    if i.swarm_active {
        out += "Swarm: active\n";
        out += &format!(" Cluster ID: {}\n", i.cluster_id.as_deref().unwrap_or("-"));
        out += &format!(" Is Manager: {}\n", i.is_manager);
        if i.is_manager {
            out += &format!(" Is Leader: {}\n", i.is_leader);
        }
    } else {
        out += "Swarm: inactive\n";
    }
    out += &format!(" Cluster port: {}\n", i.api_addr);
    if let Some(g) = &i.gossip {
        if g.running {
            out += &format!(" Gossip: {} (udp)\n", g.addr);
            out += &format!("  Members: {} ({} live)\n", g.members, g.live);
            out += &format!("  Forged datagrams dropped: {}\n", g.rejected_datagrams);
        } else {
            out += &format!(
                " Gossip: off ({})\n",
                g.error.as_deref().unwrap_or("not started")
            );
        }
    }
    if let Some(e) = &i.engine {
        out += &engine(e);
    }
    out
}

fn engine(e: &EngineInfo) -> String {
    let on = |b: bool| if b { "on" } else { "off" };
    let mut out = "Wasm engine: wasmtime\n".to_string();
    out += &format!(" Isolation: {}\n", e.isolation);
    out += &format!(
        "  Guard pages: {}\n",
        if e.memory_guard_bytes > 0 {
            gib(e.memory_guard_bytes)
        } else {
            "none (explicit bounds checks)".into()
        }
    );
    out += &format!("  Signals-based traps: {}\n", on(e.signals_based_traps));
    out += &format!("  Spectre mitigations: {}\n", on(e.spectre_mitigations));
    out += &format!(" Instance allocator: {}\n", e.allocator);
    if let Some(slots) = e.pool_slots {
        out += &format!("  Pool slots: {slots}\n");
        out += &format!("  Pool reservation: {}\n", gib(e.pool_reservation_bytes));
    }
    out += &format!(
        "  Memory reservation: {}\n",
        gib(e.memory_reservation_bytes)
    );
    out += &format!(
        " Address space: {}\n",
        e.address_space_bytes
            .map(gib)
            .unwrap_or_else(|| "unknown".into())
    );
    out
}
