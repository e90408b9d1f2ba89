//! One function per endpoint. Handlers validate, then propose through raft;
//! they answer only after the change is committed and applied.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use swarmlet_proto::api::*;
use swarmlet_proto::{
    Command, DesiredState, Image, Limits, Node, NodeRole, PortConfig, Protocol, Service,
    ServiceSpec, TaskState, DYNAMIC_PORT_RANGE,
};

use super::server::{body_json, json, ApiState, Response};
use super::ApiError;
use crate::identity::random_id;
use crate::orchestrator::now_ms;
use crate::runtime::wasm::HttpWorld;
use crate::store::{Lookup, State};

pub async fn info(st: &ApiState) -> Result<Response, ApiError> {
    let cluster = st.cluster.get();
    // A worker has no store: what it joined says which swarm.
    let joined = st.joined.get();
    Ok(json(
        200,
        &InfoResponse {
            node_id: st.identity.node_id.clone(),
            hostname: st.identity.hostname.clone(),
            swarm_active: cluster.is_some() || joined.is_some(),
            is_manager: cluster.is_some(),
            is_leader: cluster.map(|c| c.raft.is_leader()).unwrap_or(false),
            cluster_id: cluster
                .and_then(|c| c.store.read().cluster_id.clone())
                .or_else(|| joined.map(|j| j.cluster_id.clone())),
            api_addr: st.api_addr.to_string(),
            engine: Some(engine_info(st.runtime.settings())),
            gossip: gossip_info(st),
        },
    ))
}

fn gossip_info(st: &ApiState) -> Option<GossipInfo> {
    if let Some(m) = st.membership.get() {
        let members = m.members();
        return Some(GossipInfo {
            running: true,
            addr: m.gossip_addr().to_string(),
            members: members.len(),
            live: members.iter().filter(|m| m.is_live()).count(),
            rejected_datagrams: m.rejected_datagrams(),
            error: None,
        });
    }
    let error = st
        .gossip_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    error.map(|e| GossipInfo {
        running: false,
        addr: String::new(),
        members: 0,
        live: 0,
        rejected_datagrams: 0,
        error: Some(e),
    })
}

fn engine_info(s: &crate::runtime::wasm::EngineSettings) -> EngineInfo {
    use crate::runtime::wasm::Allocator;
    EngineInfo {
        isolation: s.isolation.name().to_string(),
        signals_based_traps: s.signals_based_traps,
        spectre_mitigations: s.spectre_mitigations,
        memory_guard_bytes: s.memory_guard,
        memory_reservation_bytes: s.memory_reservation,
        allocator: match s.allocator {
            Allocator::Pooling { .. } => "pooling",
            Allocator::OnDemand => "on-demand",
        }
        .to_string(),
        pool_slots: match s.allocator {
            Allocator::Pooling { slots } => Some(slots),
            Allocator::OnDemand => None,
        },
        pool_reservation_bytes: s.pool_reservation(),
        address_space_bytes: s.address_space,
    }
}

pub async fn init(st: &ApiState, body: Incoming) -> Result<Response, ApiError> {
    let req: InitRequest = body_json(body).await?;
    let _guard = st.init_lock.lock().await;
    if st.cluster.get().is_some() {
        return Err(ApiError::conflict(
            "this node is already part of a swarm; its services are listed by \"swarmlet service ls\"",
        ));
    }
    if st.joined.get().is_some() || st.cluster_port.is_secure() {
        return Err(ApiError::conflict(
            "this node has joined a swarm (it holds that swarm's certificates); run \"swarmlet leave\" before creating a new one",
        ));
    }
    let given = req.advertise_addr.or_else(|| st.advertise_addr.clone());
    let advertise = match given.as_deref().filter(|a| !a.is_empty()) {
        Some(a) => parse_advertise(a, st.api_addr.port())?,
        None if st.api_addr.ip().is_unspecified() => {
            let ip = crate::netutil::default_advertise_ip().map_err(ApiError::bad_request)?;
            SocketAddr::new(ip, st.api_addr.port())
        }
        None => st.api_addr,
    };
    let node = Node {
        id: st.identity.node_id.clone(),
        raft_id: st.identity.raft_id,
        hostname: st.identity.hostname.clone(),
        role: NodeRole::Manager,
        availability: swarmlet_proto::Availability::Active,
        addr: advertise.to_string(),
        created_at_ms: now_ms(),
        status: swarmlet_proto::NodeStatus::ready(),
        port_problems: Vec::new(),
    };
    let cluster_id = random_id(25);
    // One durable step: the swarm's first snapshot already holds the cluster
    // and this node, so a crash leaves no swarm or a whole one.
    let mut first = crate::store::State {
        cluster_id: Some(cluster_id.clone()),
        ..Default::default()
    };
    first.nodes.insert(node.id.clone(), node);
    // The cluster CA and join tokens are part of the same first state.
    super::join::bootstrap_pki(&mut first, &cluster_id)?;
    let cluster = crate::daemon::start_cluster(st, Some(first))
        .await
        .map_err(|e| match e.downcast_ref::<crate::raft::StorageError>() {
            // Nothing was saved (the first snapshot is one write); init can be run again.
            Some(se) if se.is_disk_full() => ApiError::new(
                507,
                format!(
                    "no space left under DATA_DIR {}: nothing was saved; free some space and run \"swarmlet init\" again",
                    st.data_dir.display()
                ),
            ),
            _ => ApiError::new(500, format!("starting raft: {e:#}")),
        })?
        .ok_or_else(|| ApiError::new(500, "raft did not start"))?;
    let cluster = st.cluster.get_or_init(|| async { cluster }).await;
    cluster.wait_leader().await;
    super::join::install_node_certs(st).map_err(|e| {
        ApiError::new(
            e.status,
            format!(
                "the swarm was created, but this manager's certificate was not written: {}; restart the daemon to retry",
                e.message
            ),
        )
    })?;
    // Not fatal: the swarm exists; `swarmlet info` tells why gossip is off.
    let _ = crate::gossip::start(st).await;
    tracing::info!(%cluster_id, "swarm initialized");
    Ok(json(
        200,
        &InitResponse {
            node_id: st.identity.node_id.clone(),
            cluster_id,
            manager_addr: advertise.to_string(),
        },
    ))
}

/// The address this node advertises to the swarm: `given` (IP or
/// IP:PORT), else the cluster port's address, else (listening on 0.0.0.0)
/// the machine's one non-loopback IPv4 address. As `init` chooses it.
pub(super) fn advertise_for(st: &ApiState, given: Option<&str>) -> Result<SocketAddr, ApiError> {
    match given.filter(|a| !a.is_empty()) {
        Some(a) => parse_advertise(a, st.api_addr.port()),
        None if st.api_addr.ip().is_unspecified() => {
            let ip = crate::netutil::default_advertise_ip().map_err(ApiError::bad_request)?;
            Ok(SocketAddr::new(ip, st.api_addr.port()))
        }
        None => Ok(st.api_addr),
    }
}

fn parse_advertise(a: &str, default_port: u16) -> Result<SocketAddr, ApiError> {
    if let Ok(sa) = a.parse::<SocketAddr>() {
        return Ok(sa);
    }
    a.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "--advertise-addr {a:?} is not an IP address or IP:PORT"
            ))
        })
}

/// How long a refused upload's remaining body is read and discarded, so
/// the client sees the answer instead of a connection reset (nginx's
/// lingering close); nothing of it is kept.
const LINGER: std::time::Duration = std::time::Duration::from_secs(10);
const LINGER_BYTES: u64 = 1 << 30;

/// `POST /v1/blobs`: the body is streamed to a temp file while it is hashed
/// (see `blobs`), checked, validated as a component and only then stored;
/// the answer comes after the blob is durable.
pub async fn put_blob(st: &ApiState, mut body: Incoming) -> Result<Response, ApiError> {
    let result = receive_blob(st, &mut body).await;
    if result.is_err() {
        linger(body);
    }
    result
}

async fn receive_blob(st: &ApiState, body: &mut Incoming) -> Result<Response, ApiError> {
    use http_body_util::BodyExt as _;
    let declared = hyper::body::Body::size_hint(body).exact();
    if declared.is_some_and(|n| n > st.blobs.max_upload()) {
        // Refused before anything is read (a client that sent
        // `Expect: 100-continue` sends nothing more).
        return Err(st.blobs.too_large().into());
    }
    let _slot = st.blobs.upload_slot().await?;
    let upload = st.blobs.begin_upload()?;
    // Disk writes happen on a blocking thread; a few chunks in flight at
    // most, so an upload holds little memory however large it is.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let writer = tokio::task::spawn_blocking(move || {
        let mut upload = upload;
        while let Some(chunk) = rx.blocking_recv() {
            upload.write(&chunk)?;
        }
        Ok::<_, crate::blobs::BlobError>(upload)
    });
    // On any early return the writer's result is dropped, which removes
    // its temp file.
    let mut pace = super::upload::Pace::start();
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(super::upload::UPLOAD_IDLE, body.frame()) => next,
            // The writer refused the upload (junk, too large, disk full):
            // answer now, not when the client sends its next bytes.
            _ = tx.closed() => break,
        };
        match next {
            Err(_) => return Err(super::upload::Pace::idle()),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(format!("reading the upload: {e}")));
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    pace.add(data.len())?;
                    if tx.send(data).await.is_err() {
                        break; // the writer refused the upload
                    }
                }
            }
        }
    }
    drop(tx);
    let upload = writer
        .await
        .map_err(|e| ApiError::new(500, format!("receiving the upload: {e}")))??;
    let runtime = st.runtime.clone();
    let (digest, size) = tokio::task::spawn_blocking(move || {
        let mut staged = upload.finish()?;
        staged.validate(|digest, bytes| {
            runtime.validate(digest.as_str(), bytes).map_err(|e| {
                // Refused before it is stored; no compiled artifact stays either.
                runtime.forget_artifact(digest.as_str());
                ApiError::bad_request(e.to_string())
            })
        })??;
        let size = staged.size;
        Ok::<_, ApiError>((staged.commit()?, size))
    })
    .await
    .map_err(|e| ApiError::new(500, format!("storing the upload: {e}")))??;
    tracing::info!(%digest, size, "component uploaded");
    Ok(json(
        201,
        &BlobResponse {
            digest: digest.to_string(),
            size,
        },
    ))
}

/// Reads and discards what is left of a refused request's body, for at
/// most `LINGER` and `LINGER_BYTES`.
fn linger(mut body: Incoming) {
    use http_body_util::BodyExt as _;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut read = 0u64;
        while read < LINGER_BYTES {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    read += frame.data_ref().map(|d| d.len() as u64).unwrap_or(0)
                }
                _ => return,
            }
        }
    });
}

pub fn get_blob(st: &ApiState, digest: &str) -> Result<Response, ApiError> {
    let digest = swarmlet_proto::Digest::parse(digest).map_err(crate::blobs::BlobError::from)?;
    let bytes = st.blobs.get(digest.as_str())?;
    let mut r = hyper::Response::new(Full::new(Bytes::from(bytes)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

fn service_view(state: &State, s: &Service) -> ServiceView {
    let running = state
        .tasks_of(&s.id)
        .filter(|t| t.desired_state == DesiredState::Running && t.state == TaskState::Running)
        .count() as u64;
    ServiceView {
        service: s.clone(),
        running,
        desired: s.spec.replicas,
    }
}

pub fn services(st: &ApiState) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let state = cluster.store.read();
    let views: Vec<ServiceView> = state
        .services
        .values()
        .map(|s| service_view(&state, s))
        .collect();
    Ok(json(200, &views))
}

fn not_found(key: &str) -> ApiError {
    ApiError::not_found(format!(
        "service {key} not found; \"swarmlet service ls\" lists the services"
    ))
}

/// The service `key` names (ID, name or unique ID prefix), or the error a
/// user reads: not found, or which prefix is ambiguous.
pub(super) fn lookup_service<'a>(state: &'a State, key: &str) -> Result<&'a Service, ApiError> {
    state.lookup_service(key).map_err(|e| match e {
        Lookup::NotFound => not_found(key),
        Lookup::Ambiguous { matches } => ApiError::bad_request(format!(
            "service {key} is ambiguous ({matches} matches found); use more of the ID or the name"
        )),
    })
}

pub fn service(st: &ApiState, key: &str) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let state = cluster.store.read();
    let s = lookup_service(&state, key)?;
    Ok(json(200, &service_view(&state, s)))
}

/// The most replicas one service may ask for: every task is a record in the
/// raft log and the store, so an absurd count (a typo, `--replicas 10000000`)
/// is refused instead of exhausting the managers' memory.
pub const MAX_REPLICAS: u64 = 10_000;

fn check_replicas(replicas: u64) -> Result<(), ApiError> {
    if replicas > MAX_REPLICAS {
        return Err(ApiError::bad_request(format!(
            "{replicas} replicas is more than a service may have (at most {MAX_REPLICAS})"
        )));
    }
    Ok(())
}

/// `--allow-outbound`, `--instance-reuse`, `--instance-concurrency` and
/// `--max-concurrent-requests` (whether the component is WASIp3 is checked
/// once it is compiled).
pub(super) fn check_request_settings(req: &CreateServiceRequest) -> Result<(), ApiError> {
    crate::runtime::wasm::EgressPolicy::parse(&req.allow_outbound)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if req.instance_reuse == Some(0) {
        return Err(ApiError::bad_request(
            "--instance-reuse 0 is not a count of requests; give 2 or more to reuse an instance, or leave it out for a fresh instance per request",
        ));
    }
    let max = crate::runtime::wasm::MAX_INSTANCE_CONCURRENCY;
    match req.instance_concurrency {
        Some(0) => {
            return Err(ApiError::bad_request(
                "--instance-concurrency 0 would let an instance serve no request; give 2 or more to serve requests concurrently in one instance, or leave it out for one at a time",
            ))
        }
        Some(n) if n > max => {
            return Err(ApiError::bad_request(format!(
                "--instance-concurrency {n} is more than one instance may serve at once (at most {max}); give a smaller number and let more instances share the load"
            )))
        }
        _ => {}
    }
    if req.max_concurrent_requests == Some(0) {
        return Err(ApiError::bad_request(
            "--max-concurrent-requests 0 would refuse every request; give 1 or more",
        ));
    }
    Ok(())
}

fn check_memory_limit(limit: Option<u64>) -> Result<(), ApiError> {
    let max = crate::runtime::wasm::MAX_MEMORY as u64;
    match limit {
        Some(l) if l < 1 << 20 => Err(ApiError::bad_request(format!(
            "--limit-memory {l} bytes is too small for a wasm instance; give at least 1MiB"
        ))),
        Some(l) if l > max => Err(ApiError::bad_request(format!(
            "--limit-memory {} MiB is more than a wasm instance may have on this node ({} MiB)",
            l >> 20,
            max >> 20
        ))),
        _ => Ok(()),
    }
}

/// Docker's rule for service names (shared with the CLI, which checks
/// before uploading).
fn valid_name(name: &str) -> bool {
    swarmlet_proto::valid_service_name(name)
}

/// Whether something else on this machine holds `port` on the publish address.
fn port_taken(st: &ApiState, port: u16) -> Option<std::io::Error> {
    std::net::TcpListener::bind(SocketAddr::new(st.publish_ip(), port)).err()
}

pub async fn create_service(st: &ApiState, body: Incoming) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let req: CreateServiceRequest = body_json(body).await?;
    if replayed(cluster) {
        // The client's retry of a create that was applied: the same answer.
        let state = cluster.store.read();
        if let Some(s) = state.find_service(&req.name) {
            return Ok(json(201, &service_view(&state, s)));
        }
    }
    check_replicas(req.replicas)?;
    if !valid_name(&req.name) {
        return Err(ApiError::bad_request(format!(
            "invalid service name {:?}: {}",
            req.name,
            swarmlet_proto::SERVICE_NAME_RULE
        )));
    }
    // The store refuses duplicates too (it is the authority); checking here
    // first answers before the component is compiled or the image resolved.
    if let Some(other) = cluster
        .store
        .read()
        .find_service(&req.name)
        .filter(|s| s.spec.name == req.name)
    {
        return Err(ApiError::conflict(format!(
            "service name {:?} is already in use by service {}",
            req.name, other.id
        )));
    }
    let image = match &req.image {
        Some(reference) => {
            super::containers::check_container_request(&req)?;
            super::containers::resolve_image(st, reference, req.no_resolve_image).await?
        }
        None => wasm_image(st, &req).await?,
    };

    let (ports, id) = {
        let state = cluster.store.read();
        (
            allocate_ports(st, &state, &req.ports)?,
            state.new_service_id(|| random_id(25)),
        )
    };
    let now = now_ms();
    let service = Service {
        id,
        spec: ServiceSpec {
            name: req.name.clone(),
            replicas: req.replicas,
            image,
            ports,
            limits: Limits {
                memory_bytes: req.limit_memory,
                concurrent_requests: req.max_concurrent_requests,
                nano_cpus: req.limit_nano_cpus,
            },
            allow_outbound: req.allow_outbound.clone(),
            instance_reuse: req.instance_reuse.unwrap_or(0),
            instance_concurrency: req.instance_concurrency.unwrap_or(0),
            env: req.env.clone(),
            stop_grace_period_ms: req.stop_grace_period_ms,
        },
        version: 1,
        created_at_ms: now,
        updated_at_ms: now,
    };
    cluster
        .propose_once(Command::CreateService {
            service: service.clone(),
        })
        .await?;
    let state = cluster.store.read();
    // A client's retry (same Idempotency-Key) made no new service: answer
    // with the one its first attempt created. A key first used to create
    // another service made nothing: say so, never a made-up success.
    match state
        .services
        .get(&service.id)
        .or_else(|| state.find_service(&service.spec.name))
    {
        Some(created) => Ok(json(201, &service_view(&state, created))),
        None => Err(key_reused()),
    }
}

/// A wasm service's checks and its image: the uploaded component, which
/// must be one this node can serve (checked before anything is stored).
async fn wasm_image(st: &ApiState, req: &CreateServiceRequest) -> Result<Image, ApiError> {
    check_memory_limit(req.limit_memory)?;
    check_request_settings(req)?;
    let container_only = [
        (!req.env.is_empty(), "--env"),
        (req.limit_nano_cpus.is_some(), "--limit-cpu"),
        (req.no_resolve_image, "--no-resolve-image"),
    ];
    if let Some((_, flag)) = container_only.iter().find(|(set, _)| *set) {
        return Err(ApiError::bad_request(format!(
            "{flag} applies to container services only, and this service runs a wasm component; leave {flag} out (a wasm guest gets no environment or CPU limit)"
        )));
    }
    if req.wasm_digest.is_empty() {
        return Err(ApiError::bad_request(
            "the request names neither a wasm component (wasm_digest) nor an image reference (image)",
        ));
    }
    // Canonical from here on: the store, GC and the agent compare strings.
    let wasm_digest = swarmlet_proto::Digest::parse(&req.wasm_digest)
        .map_err(crate::blobs::BlobError::from)?
        .to_string();
    let blob = st.blobs.existing(&wasm_digest)?;
    let size = std::fs::metadata(&blob).map(|m| m.len()).unwrap_or(0);
    let (runtime, blobs, digest) = (st.runtime.clone(), st.blobs.clone(), wasm_digest.clone());
    let world = tokio::task::spawn_blocking(move || {
        let bytes = blobs.get(&digest)?;
        runtime
            .validate(&digest, &bytes)
            .map_err(|e| ApiError::bad_request(format!("{e}")))
    })
    .await
    .map_err(|e| ApiError::new(500, e.to_string()))??;
    if let (Some(n), HttpWorld::P2) = (req.instance_concurrency, world) {
        return Err(ApiError::bad_request(format!(
            "--instance-concurrency needs a WASIp3 component (wasi:http/service@0.3); this one is {}, whose handler serves one request at a time; leave --instance-concurrency {n} out (--instance-reuse N reuses its instances one request after another)",
            world.name()
        )));
    }
    Ok(Image::Wasm {
        digest: wasm_digest,
        name: req.wasm_name.clone(),
        size,
    })
}

fn allocate_ports(
    st: &ApiState,
    state: &State,
    wanted: &[PortRequest],
) -> Result<Vec<PortConfig>, ApiError> {
    let mut out: Vec<PortConfig> = Vec::new();
    for p in wanted {
        if p.target == 0 {
            return Err(ApiError::bad_request(
                "target port 0 is not a valid port (1-65535)",
            ));
        }
        let published = match p.published {
            Some(0) => {
                return Err(ApiError::bad_request(
                    "published port 0 is not a valid port (1-65535)",
                ))
            }
            Some(port) => {
                if out.iter().any(|o| o.published == port) {
                    return Err(ApiError::bad_request(format!(
                        "port {port} is published twice"
                    )));
                }
                if let Some(owner) = state.port_owner(port) {
                    return Err(ApiError::conflict(format!(
                        "port {port} is already published by service {}; choose another published port",
                        owner.spec.name
                    )));
                }
                if let Some(e) = port_taken(st, port) {
                    if e.kind() == std::io::ErrorKind::AddrNotAvailable {
                        return Err(ApiError::conflict(format!(
                            "this node cannot listen on its publish address {}: it is not an address of this machine ({e}); start the daemon with a --publish-addr this machine has",
                            st.publish_ip()
                        )));
                    }
                    return Err(ApiError::conflict(format!(
                        "port {port} is already in use on this node by another process ({e}); stop it or choose another published port"
                    )));
                }
                port
            }
            None => DYNAMIC_PORT_RANGE
                .clone()
                .find(|&port| {
                    state.port_owner(port).is_none()
                        && !out.iter().any(|o| o.published == port)
                        && port_taken(st, port).is_none()
                })
                .ok_or_else(|| {
                    ApiError::conflict("no free port left in 30000-32767 to publish on")
                })?,
        };
        out.push(PortConfig {
            published,
            target: p.target,
            protocol: Protocol::Tcp,
        });
    }
    Ok(out)
}

/// The ID of the service `key` names (name, ID or unique ID prefix).
fn service_id(cluster: &crate::daemon::Cluster, key: &str) -> Result<String, ApiError> {
    let state = cluster.store.read();
    lookup_service(&state, key).map(|s| s.id.clone())
}

/// A client reused an `Idempotency-Key` for a different request.
fn key_reused() -> ApiError {
    ApiError::new(
        422,
        "this Idempotency-Key was already used for a different request; send a new key with each request (the same key only to retry that request)",
    )
}

/// Whether this request's `Idempotency-Key` names a write the swarm has
/// applied already (the client is retrying it).
fn replayed(cluster: &crate::daemon::Cluster) -> bool {
    crate::link::writer::CLIENT_KEY
        .try_with(|k| cluster.store.read().request_keys.contains_key(k))
        .unwrap_or(false)
}

pub async fn remove_service(st: &ApiState, key: &str) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    if replayed(cluster) {
        return Ok(json(200, &serde_json::json!({ "id": key })));
    }
    let id = service_id(cluster, key)?;
    cluster
        .propose_once(Command::RemoveService {
            service_id: id.clone(),
        })
        .await?;
    Ok(json(200, &serde_json::json!({ "id": id })))
}

pub async fn scale_service(st: &ApiState, key: &str, body: Incoming) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let req: ScaleRequest = body_json(body).await?;
    check_replicas(req.replicas)?;
    let id = service_id(cluster, key)?;
    if replayed(cluster) {
        // A retry answers as the first attempt did; the same key with
        // another count is another request.
        let state = cluster.store.read();
        let s = state.services.get(&id).ok_or_else(|| not_found(key))?;
        if s.spec.replicas != req.replicas {
            return Err(key_reused());
        }
        return Ok(json(200, &service_view(&state, s)));
    }
    cluster
        .propose_once(Command::ScaleService {
            service_id: id.clone(),
            replicas: req.replicas,
        })
        .await?;
    let state = cluster.store.read();
    let s = state.services.get(&id).ok_or_else(|| not_found(key))?;
    Ok(json(200, &service_view(&state, s)))
}

pub fn service_tasks(st: &ApiState, key: &str, query: &str) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let state = cluster.store.read();
    let s = lookup_service(&state, key)?;
    let only_running = query.split('&').any(|kv| kv == "desired-state=running");
    Ok(json(200, &task_views(&state, s, only_running)))
}

/// The tasks of `s` as `service ps` shows them: by slot, newest first
/// within a slot (as docker).
fn task_views(state: &State, s: &Service, only_running: bool) -> Vec<TaskView> {
    let mut views: Vec<TaskView> = state
        .tasks_of(&s.id)
        .filter(|t| !only_running || t.desired_state == DesiredState::Running)
        .map(|t| TaskView {
            task: t.clone(),
            node_name: t
                .node_id
                .as_ref()
                .and_then(|n| state.nodes.get(n))
                .map(|n| n.hostname.clone())
                .unwrap_or_default(),
            image: s.spec.image.display_name().to_string(),
        })
        .collect();
    views.sort_by(|a, b| {
        a.task
            .slot
            .cmp(&b.task.slot)
            .then(b.task.created_at_ms.cmp(&a.task.created_at_ms))
    });
    views
}

/// How long `status?wait=V` holds a request when nothing changes.
const LONG_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// A service and its tasks at one raft applied index. With `wait=V` the
/// answer waits (up to `LONG_POLL`) until the store has applied past V, so a
/// client following convergence learns of each change at once without
/// polling in a loop.
pub async fn service_status(st: &ApiState, key: &str, query: &str) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let wait = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("wait="))
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("wait={v:?} is not a store version")))
        })
        .transpose()?;
    // Versions are raft's applied index: the same number means the same
    // state on every manager, so a client may follow on any of them.
    if let Some(v) = wait {
        let _ = tokio::time::timeout(LONG_POLL, cluster.raft.wait_applied(v + 1)).await;
    }
    let version = cluster.raft.applied_index();
    let state = cluster.store.read();
    let s = lookup_service(&state, key)?;
    Ok(json(
        200,
        &ServiceStatus {
            version,
            service: service_view(&state, s),
            tasks: task_views(&state, s, false),
        },
    ))
}
