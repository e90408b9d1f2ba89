//! The plain data of the state machine and how each command changes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use swarmlet_proto::{Command, DesiredState, Envelope, Node, Service, Task, TaskState, TaskStatus};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("this node is already part of a swarm")]
    AlreadyInitialized,
    #[error("service name {0:?} is already in use by service {1}")]
    DuplicateName(String, String),
    #[error("port {port} is already published by service {service}")]
    PortInUse { port: u16, service: String },
    #[error("service name {name:?} is the start of service {id}'s ID; choose a name that is not an ID prefix, so that an ID from \"service ls\" always means one service")]
    NameIsIdPrefix { name: String, id: String },
    #[error("service {0} not found")]
    NoSuchService(String),
    #[error("task {0} not found")]
    NoSuchTask(String),
    #[error("tasks for version {version} of service {service}, which is at version {current} now")]
    StaleServiceVersion {
        service: String,
        version: u64,
        current: u64,
    },
    /// The same client write was applied before (its retry after a leader
    /// change): it changed nothing now.
    #[error("this change was already applied (request {0})")]
    AlreadyApplied(String),
    #[error("node {0} not found")]
    NoSuchNode(String),
    #[error("node {0} is already part of this swarm; a node joins once (run \"swarmlet leave\" on it first to join again)")]
    DuplicateNode(String),
    #[error("raft ID {raft_id} is already used by node {node}")]
    DuplicateRaftId { raft_id: u64, node: String },
    #[error("the swarm has no join tokens (it was created before tokens existed)")]
    NoJoinTokens,
    #[error("node {reporter} reported the state of task {task}, which is assigned to {}; a node reports only its own tasks", owner.as_deref().unwrap_or("no node"))]
    NotTheTasksNode {
        task: String,
        owner: Option<String>,
        reporter: String,
    },
}

/// How long an idempotency key is remembered: a client retries within
/// seconds; a day covers any retry a person would make by hand.
const REQUEST_KEY_TTL_MS: u64 = 24 * 3600 * 1000;

/// How many characters of an ID `service ls` prints.
pub const SHORT_ID_LEN: usize = 12;

/// Whether `name` could be taken for the service ID `id` as a user copies
/// it from `service ls`: at least the printed length and a prefix of it.
/// Shorter names win over ID prefixes in lookups (as docker's), so they
/// may be anything.
fn id_clash(id: &str, name: &str) -> bool {
    name.len() >= SHORT_ID_LEN && id.starts_with(name)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub cluster_id: Option<String>,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<String, Service>,
    pub tasks: BTreeMap<String, Task>,
    /// Idempotency keys of applied client writes, with when they were
    /// applied (the entry's time), forgotten after `REQUEST_KEY_TTL_MS`.
    #[serde(default)]
    pub request_keys: BTreeMap<String, u64>,
    /// The cluster's root CA (certificate + key), set at `init`.
    #[serde(default)]
    pub cluster_ca: Option<swarmlet_proto::cluster::CaMaterial>,
    /// The join tokens' secrets (current per role + retired), set at `init`.
    #[serde(default)]
    pub join_tokens: Option<swarmlet_proto::cluster::JoinTokens>,
    /// IDs of nodes removed with `node rm`: their certificates are refused
    /// on every manager's cluster port (`ClusterPort::set_revoked`).
    #[serde(default)]
    pub removed_nodes: std::collections::BTreeSet<String>,
    /// The cluster's gossip key (64 hex characters), set at `init` and
    /// handed to joining nodes; it keys the MAC on every gossip datagram.
    #[serde(default)]
    pub gossip_key: Option<String>,
}

impl State {
    /// Looks a service up by exact ID, exact name, or unique ID prefix, as
    /// docker does.
    pub fn find_service(&self, key: &str) -> Option<&Service> {
        self.lookup_service(key).ok()
    }

    /// A service by exact ID, name (names are unique) or unique ID prefix;
    /// a prefix of two IDs is ambiguous.
    pub fn lookup_service(&self, key: &str) -> Result<&Service, Lookup> {
        if let Some(s) = self.services.get(key) {
            return Ok(s);
        }
        if let Some(s) = self.services.values().find(|s| s.spec.name == key) {
            return Ok(s);
        }
        unique_prefix(
            key,
            self.services.values().filter(|s| s.id.starts_with(key)),
        )
    }

    /// A fresh service ID that does not start with any existing service's
    /// ID-like name (see `StoreError::NameIsIdPrefix`).
    pub fn new_service_id(&self, random: impl Fn() -> String) -> String {
        loop {
            let id = random();
            if !self.services.values().any(|s| id_clash(&id, &s.spec.name)) {
                return id;
            }
        }
    }

    /// The service that publishes `port`, if any.
    pub fn port_owner(&self, port: u16) -> Option<&Service> {
        self.services
            .values()
            .find(|s| s.spec.ports.iter().any(|p| p.published == port))
    }

    pub fn tasks_of<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.service_id == service_id)
    }

    pub(super) fn apply(&mut self, entry: &Envelope) -> Result<(), StoreError> {
        self.apply_command(&entry.command, entry.at_ms)
    }

    fn apply_command(&mut self, command: &Command, now: u64) -> Result<(), StoreError> {
        match command {
            Command::InitCluster { cluster_id, node } => {
                if self.cluster_id.is_some() {
                    return Err(StoreError::AlreadyInitialized);
                }
                self.cluster_id = Some(cluster_id.clone());
                self.nodes.insert(node.id.clone(), node.clone());
            }
            Command::CreateService { service } => {
                if let Some(other) = self
                    .services
                    .values()
                    .find(|s| s.spec.name == service.spec.name)
                {
                    return Err(StoreError::DuplicateName(
                        service.spec.name.clone(),
                        other.id.clone(),
                    ));
                }
                // An ID as `service ls` prints it must never also be a name.
                if let Some(clash) = self.services.values().find(|s| {
                    id_clash(&s.id, &service.spec.name) || id_clash(&service.id, &s.spec.name)
                }) {
                    let (name, id) = if id_clash(&clash.id, &service.spec.name) {
                        (service.spec.name.clone(), clash.id.clone())
                    } else {
                        (clash.spec.name.clone(), service.id.clone())
                    };
                    return Err(StoreError::NameIsIdPrefix { name, id });
                }
                for p in &service.spec.ports {
                    if let Some(other) = self.port_owner(p.published) {
                        return Err(StoreError::PortInUse {
                            port: p.published,
                            service: other.spec.name.clone(),
                        });
                    }
                }
                self.services.insert(service.id.clone(), service.clone());
            }
            Command::ScaleService {
                service_id,
                replicas,
            } => {
                let s = self
                    .services
                    .get_mut(service_id)
                    .ok_or_else(|| StoreError::NoSuchService(service_id.clone()))?;
                s.spec.replicas = *replicas;
                s.version += 1;
                s.updated_at_ms = now;
            }
            Command::RemoveService { service_id } => {
                self.services
                    .remove(service_id)
                    .ok_or_else(|| StoreError::NoSuchService(service_id.clone()))?;
                for t in self
                    .tasks
                    .values_mut()
                    .filter(|t| &t.service_id == service_id)
                {
                    if t.desired_state != DesiredState::Shutdown {
                        t.desired_state = DesiredState::Shutdown;
                        t.updated_at_ms = now;
                    }
                }
            }
            Command::CreateTasks { tasks } => {
                // Tasks decided on an older view (the service was removed or
                // scaled meanwhile) are refused whole; the orchestrator
                // decides again on the current state.
                for t in tasks {
                    let s = self
                        .services
                        .get(&t.service_id)
                        .ok_or_else(|| StoreError::NoSuchService(t.service_id.clone()))?;
                    if t.service_version < s.version {
                        return Err(StoreError::StaleServiceVersion {
                            service: s.spec.name.clone(),
                            version: t.service_version,
                            current: s.version,
                        });
                    }
                }
                for t in tasks {
                    self.tasks.insert(t.id.clone(), t.clone());
                }
            }
            Command::SetDesiredState { task_ids, desired } => {
                for id in task_ids {
                    if let Some(t) = self.tasks.get_mut(id) {
                        t.desired_state = *desired;
                        t.updated_at_ms = now;
                    }
                }
            }
            Command::RemoveTasks { task_ids } => {
                for id in task_ids {
                    self.tasks.remove(id);
                }
            }
            Command::UpdateTaskStatus {
                task_id,
                state,
                message,
                error,
            } => {
                let t = self
                    .tasks
                    .get_mut(task_id)
                    .ok_or_else(|| StoreError::NoSuchTask(task_id.clone()))?;
                set_status(t, *state, message, error, now);
            }
            Command::UpdateTaskStatuses { updates } => {
                // A report for a task removed meanwhile is dropped: one gone
                // task must not refuse the others' reports.
                for u @ TaskStatus {
                    task_id,
                    state,
                    message,
                    error,
                    ..
                } in updates
                {
                    if let Some(t) = self.tasks.get_mut(task_id) {
                        set_status(t, *state, message, error, now);
                        set_endpoint(t, u);
                    }
                }
            }
            Command::Idempotent { key, command } => {
                self.request_keys
                    .retain(|_, at| at.saturating_add(REQUEST_KEY_TTL_MS) > now);
                if self.request_keys.contains_key(key) {
                    return Err(StoreError::AlreadyApplied(key.clone()));
                }
                self.apply_command(command, now)?;
                self.request_keys.insert(key.clone(), now);
            }
            Command::RemoveNode { node_id } => {
                self.nodes
                    .remove(node_id)
                    .ok_or_else(|| StoreError::NoSuchNode(node_id.clone()))?;
                self.removed_nodes.insert(node_id.clone());
                // Its tasks are replaced elsewhere by the orchestrator.
                for t in self
                    .tasks
                    .values_mut()
                    .filter(|t| t.node_id.as_deref() == Some(node_id.as_str()))
                {
                    if t.desired_state != DesiredState::Shutdown {
                        t.desired_state = DesiredState::Shutdown;
                        t.updated_at_ms = now;
                    }
                    if !t.state.is_terminal() {
                        t.state = TaskState::Shutdown;
                        t.message = "its node was removed from the swarm".into();
                        t.updated_at_ms = now;
                    }
                }
            }
            Command::SetNodeRole { node_id, role } => {
                let n = self
                    .nodes
                    .get_mut(node_id)
                    .ok_or_else(|| StoreError::NoSuchNode(node_id.clone()))?;
                n.role = *role;
            }
            Command::SetNodeAvailability {
                node_id,
                availability,
            } => {
                let n = self
                    .nodes
                    .get_mut(node_id)
                    .ok_or_else(|| StoreError::NoSuchNode(node_id.clone()))?;
                n.availability = *availability;
            }
            Command::AddNode { node } => {
                if self.nodes.contains_key(&node.id) {
                    return Err(StoreError::DuplicateNode(node.id.clone()));
                }
                if let Some(other) = self.nodes.values().find(|n| n.raft_id == node.raft_id) {
                    return Err(StoreError::DuplicateRaftId {
                        raft_id: node.raft_id,
                        node: other.id.clone(),
                    });
                }
                self.nodes.insert(node.id.clone(), node.clone());
            }
            Command::RotateJoinToken { role, secret } => {
                let tokens = self.join_tokens.as_mut().ok_or(StoreError::NoJoinTokens)?;
                let slot = match role {
                    swarmlet_proto::NodeRole::Manager => &mut tokens.manager,
                    swarmlet_proto::NodeRole::Worker => &mut tokens.worker,
                };
                let old = std::mem::replace(slot, secret.clone());
                tokens.retired.push(swarmlet_proto::cluster::RetiredSecret {
                    role: *role,
                    secret: old,
                    rotated_at_ms: now,
                });
                // Enough history to name a rotated token; older ones are
                // simply "wrong".
                let excess = tokens.retired.len().saturating_sub(32);
                tokens.retired.drain(..excess);
            }
            Command::SetNodeStatus { node_id, status } => {
                let n = self
                    .nodes
                    .get_mut(node_id)
                    .ok_or_else(|| StoreError::NoSuchNode(node_id.clone()))?;
                n.status = status.clone();
            }
            Command::ReportTaskStatuses { node_id, updates } => {
                // Only the task's own node may say what it is doing: checked
                // for the whole entry first, so a refused entry changes
                // nothing. A task removed meanwhile is skipped, as above.
                if let Some((t, owner)) = updates.iter().find_map(|u| {
                    let owner = &self.tasks.get(&u.task_id)?.node_id;
                    (owner.as_deref() != Some(node_id.as_str())).then_some((u, owner))
                }) {
                    return Err(StoreError::NotTheTasksNode {
                        task: t.task_id.clone(),
                        owner: owner.clone(),
                        reporter: node_id.clone(),
                    });
                }
                for u in updates {
                    if let Some(t) = self.tasks.get_mut(&u.task_id) {
                        set_status(t, u.state, &u.message, &u.error, now);
                        set_endpoint(t, u);
                    }
                }
            }
            Command::SetNodePortProblems { node_id, problems } => {
                let n = self
                    .nodes
                    .get_mut(node_id)
                    .ok_or_else(|| StoreError::NoSuchNode(node_id.clone()))?;
                n.port_problems = problems.clone();
            }
        }
        Ok(())
    }

    /// Looks a node up by exact ID, hostname, or unique ID prefix, as
    /// docker's `node inspect/rm/promote` do: a hostname two nodes share,
    /// or a prefix of two IDs, is ambiguous (never the first match; edge
    /// devices often share a hostname such as `raspberrypi`).
    pub fn lookup_node(&self, key: &str) -> Result<&Node, Lookup> {
        if let Some(n) = self.nodes.get(key) {
            return Ok(n);
        }
        let named: Vec<&Node> = self.nodes.values().filter(|n| n.hostname == key).collect();
        match named.len() {
            1 => return Ok(named[0]),
            0 => {}
            matches => return Err(Lookup::Ambiguous { matches }),
        }
        unique_prefix(key, self.nodes.values().filter(|n| n.id.starts_with(key)))
    }

    pub fn find_node(&self, key: &str) -> Option<&Node> {
        self.lookup_node(key).ok()
    }
}

/// Why a name, ID or ID prefix found no single object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    NotFound,
    /// It names (or prefixes the IDs of) this many.
    Ambiguous {
        matches: usize,
    },
}

/// The one item among `prefixed`, if exactly one and `key` is not empty.
fn unique_prefix<'a, T>(key: &str, prefixed: impl Iterator<Item = &'a T>) -> Result<&'a T, Lookup> {
    if key.is_empty() {
        return Err(Lookup::NotFound);
    }
    let found: Vec<&T> = prefixed.collect();
    match found.len() {
        0 => Err(Lookup::NotFound),
        1 => Ok(found[0]),
        matches => Err(Lookup::Ambiguous { matches }),
    }
}

fn set_status(t: &mut Task, state: TaskState, message: &str, error: &Option<String>, now: u64) {
    // A task only moves forward; a late report of an older state
    // (reordered agent reports) is ignored, not an error.
    if state < t.state {
        return;
    }
    t.state = state;
    t.message = message.to_string();
    t.error = error.clone();
    t.updated_at_ms = now;
}

/// Keeps the address a report gives (a report of an older state than the
/// task's, ignored by `set_status`, does not change it either).
fn set_endpoint(t: &mut Task, u: &TaskStatus) {
    if u.endpoint.is_some() && u.state == t.state {
        t.endpoint = u.endpoint.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmlet_proto::{Image, PortConfig, Protocol, ServiceSpec};

    fn service(id: &str, name: &str, port: u16) -> Service {
        Service {
            id: id.into(),
            spec: ServiceSpec {
                name: name.into(),
                replicas: 1,
                image: Image::Wasm {
                    digest: "sha256:00".into(),
                    name: "x.wasm".into(),
                    size: 1,
                },
                ports: vec![PortConfig {
                    published: port,
                    target: 80,
                    protocol: Protocol::Tcp,
                }],
                limits: Default::default(),
                allow_outbound: Vec::new(),
                instance_reuse: 0,
                instance_concurrency: 0,
                env: vec![],
                stop_grace_period_ms: None,
            },
            version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn env(command: Command) -> Envelope {
        Envelope {
            proposal_id: 0,
            at_ms: 7,
            command,
        }
    }

    #[test]
    fn duplicate_name_and_port_are_refused_and_change_nothing() {
        let mut st = State::default();
        st.apply(&env(Command::CreateService {
            service: service("a", "web", 8080),
        }))
        .unwrap();
        let err = st.apply(&env(Command::CreateService {
            service: service("b", "web", 8081),
        }));
        assert_eq!(
            err,
            Err(StoreError::DuplicateName("web".into(), "a".into()))
        );
        let err = st.apply(&env(Command::CreateService {
            service: service("c", "api", 8080),
        }));
        assert_eq!(
            err,
            Err(StoreError::PortInUse {
                port: 8080,
                service: "web".into()
            })
        );
        assert_eq!(st.services.len(), 1);
    }

    #[test]
    fn a_retried_write_applies_once_and_keys_expire() {
        let mut st = State::default();
        let create = |id: &str, at_ms: u64, port: u16| Envelope {
            proposal_id: 0,
            at_ms,
            command: Command::Idempotent {
                key: "k1".into(),
                command: Box::new(Command::CreateService {
                    service: service(id, &format!("web{id}"), port),
                }),
            },
        };
        st.apply(&create("a", 1, 1)).unwrap();
        assert_eq!(
            st.apply(&create("b", 2, 2)),
            Err(StoreError::AlreadyApplied("k1".into()))
        );
        assert_eq!(st.services.len(), 1, "the retry created nothing");
        // A refused write does not use its key up.
        let dup = Envelope {
            proposal_id: 0,
            at_ms: 3,
            command: Command::Idempotent {
                key: "k2".into(),
                command: Box::new(Command::ScaleService {
                    service_id: "nope".into(),
                    replicas: 1,
                }),
            },
        };
        assert!(st.apply(&dup).is_err());
        assert!(!st.request_keys.contains_key("k2"));
        // A day later the key is forgotten.
        st.apply(&create("c", 2 + REQUEST_KEY_TTL_MS, 3)).unwrap();
        assert_eq!(st.services.len(), 2);
    }

    #[test]
    fn find_service_by_name_id_and_unique_prefix() {
        let mut st = State::default();
        st.apply(&env(Command::CreateService {
            service: service("abc1", "web", 1),
        }))
        .unwrap();
        st.apply(&env(Command::CreateService {
            service: service("abd2", "api", 2),
        }))
        .unwrap();
        assert_eq!(st.find_service("web").map(|s| s.id.as_str()), Some("abc1"));
        assert_eq!(st.find_service("abd2").map(|s| s.id.as_str()), Some("abd2"));
        assert_eq!(st.find_service("abc").map(|s| s.id.as_str()), Some("abc1"));
        assert!(st.find_service("ab").is_none(), "ambiguous prefix");
        assert_eq!(
            st.lookup_service("ab").map(|s| s.id.as_str()),
            Err(Lookup::Ambiguous { matches: 2 })
        );
        assert!(st.find_service("").is_none());
    }

    #[test]
    fn a_shared_hostname_or_id_prefix_is_ambiguous_never_the_first_match() {
        let mut st = State::default();
        for (id, hostname) in [
            ("12a0fc01", "n3"),
            ("7b01", "12a"),
            ("7c02", "12a"),
            ("9d03", "pi"),
        ] {
            st.nodes.insert(
                id.into(),
                Node {
                    id: id.into(),
                    raft_id: 1,
                    hostname: hostname.into(),
                    role: swarmlet_proto::NodeRole::Worker,
                    availability: swarmlet_proto::Availability::Active,
                    addr: "127.0.0.1:2377".into(),
                    created_at_ms: 0,
                    status: Default::default(),
                    port_problems: vec![],
                },
            );
        }
        // Two nodes are called "12a": ambiguous, not the node whose ID
        // happens to start with it.
        assert_eq!(
            st.lookup_node("12a").map(|n| n.id.as_str()),
            Err(Lookup::Ambiguous { matches: 2 })
        );
        assert_eq!(st.lookup_node("n3").map(|n| n.id.as_str()), Ok("12a0fc01"));
        assert_eq!(
            st.lookup_node("12a0").map(|n| n.id.as_str()),
            Ok("12a0fc01")
        );
        assert_eq!(st.lookup_node("7b01").map(|n| n.id.as_str()), Ok("7b01"));
        assert_eq!(
            st.lookup_node("7").map(|n| n.id.as_str()),
            Err(Lookup::Ambiguous { matches: 2 })
        );
        assert_eq!(st.lookup_node("pi").map(|n| n.id.as_str()), Ok("9d03"));
        assert_eq!(
            st.lookup_node("zz").map(|n| n.id.as_str()),
            Err(Lookup::NotFound)
        );
        assert_eq!(
            st.lookup_node("").map(|n| n.id.as_str()),
            Err(Lookup::NotFound)
        );
    }

    #[test]
    fn a_name_is_never_also_an_id_prefix() {
        let mut st = State::default();
        st.apply(&env(Command::CreateService {
            service: service("80c18e807e5e1234", "web", 1),
        }))
        .unwrap();
        // Named as the first service's ID in `service ls`: refused.
        let err = st.apply(&env(Command::CreateService {
            service: service("aaaa", "80c18e807e5e", 2),
        }));
        assert!(matches!(err, Err(StoreError::NameIsIdPrefix { .. })));
        // A new ID that starts with an existing name: refused, and
        // new_service_id never picks one.
        st.apply(&env(Command::CreateService {
            service: service("bbbb", "abcdefabcdef", 3),
        }))
        .unwrap();
        let err = st.apply(&env(Command::CreateService {
            service: service("abcdefabcdef99", "api", 4),
        }));
        assert!(matches!(err, Err(StoreError::NameIsIdPrefix { .. })));
        let ids = std::cell::Cell::new(0);
        let id = st.new_service_id(|| {
            ids.set(ids.get() + 1);
            if ids.get() == 1 {
                "abcdefabcdef99".into()
            } else {
                "cd99".into()
            }
        });
        assert_eq!(id, "cd99");
        // Short names are names, whatever IDs begin with them.
        st.apply(&env(Command::CreateService {
            service: service("b22ada14cb2a", "b", 5),
        }))
        .unwrap();
        st.apply(&env(Command::CreateService {
            service: service("b0b0", "db", 6),
        }))
        .unwrap();
        assert_eq!(
            st.find_service("80c18e807e5e")
                .map(|s| s.spec.name.as_str()),
            Some("web")
        );
    }

    fn task(id: &str, service_id: &str, version: u64) -> Task {
        Task {
            id: id.into(),
            service_id: service_id.into(),
            service_name: "web".into(),
            slot: 1,
            service_version: version,
            node_id: Some("n".into()),
            desired_state: DesiredState::Running,
            state: TaskState::Assigned,
            message: String::new(),
            error: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            endpoint: None,
        }
    }

    #[test]
    fn tasks_for_a_removed_or_rescaled_service_are_refused() {
        let mut st = State::default();
        st.apply(&env(Command::CreateService {
            service: service("s", "web", 1),
        }))
        .unwrap();
        // Decided at version 1, then the service was scaled (version 2).
        st.apply(&env(Command::ScaleService {
            service_id: "s".into(),
            replicas: 3,
        }))
        .unwrap();
        let err = st.apply(&env(Command::CreateTasks {
            tasks: vec![task("t2", "s", 2), task("t1", "s", 1)],
        }));
        assert!(
            matches!(
                err,
                Err(StoreError::StaleServiceVersion {
                    version: 1,
                    current: 2,
                    ..
                })
            ),
            "{err:?}"
        );
        assert!(
            st.tasks.is_empty(),
            "a refused batch stores none of its tasks"
        );
        st.apply(&env(Command::RemoveService {
            service_id: "s".into(),
        }))
        .unwrap();
        let err = st.apply(&env(Command::CreateTasks {
            tasks: vec![task("t3", "s", 2)],
        }));
        assert_eq!(err, Err(StoreError::NoSuchService("s".into())));
        assert!(st.tasks.is_empty());
    }

    #[test]
    fn one_entry_reports_many_tasks_and_skips_removed_ones() {
        let mut st = State::default();
        st.apply(&env(Command::CreateService {
            service: service("s", "web", 1),
        }))
        .unwrap();
        st.apply(&env(Command::CreateTasks {
            tasks: vec![task("t1", "s", 1), task("t2", "s", 1)],
        }))
        .unwrap();
        let status = |id: &str, state| TaskStatus {
            task_id: id.into(),
            state,
            message: "running".into(),
            error: None,
            endpoint: None,
        };
        st.apply(&env(Command::UpdateTaskStatuses {
            updates: vec![
                status("t1", TaskState::Running),
                status("gone", TaskState::Running),
                status("t2", TaskState::Running),
            ],
        }))
        .unwrap();
        assert_eq!(st.tasks["t1"].state, TaskState::Running);
        assert_eq!(st.tasks["t2"].state, TaskState::Running);
        assert_eq!(st.tasks["t1"].endpoint, None);

        // A replica the mesh reaches over the network reports its address
        // with `running`; a late report of an older state changes nothing.
        let at = |addr: &str| {
            Some(swarmlet_proto::TaskEndpoint {
                addr: addr.into(),
                port: 80,
            })
        };
        let mut running = status("t1", TaskState::Running);
        running.endpoint = at("10.0.6.2");
        let mut late = status("t1", TaskState::Starting);
        late.endpoint = at("10.0.6.3");
        st.apply(&env(Command::UpdateTaskStatuses {
            updates: vec![running],
        }))
        .unwrap();
        st.apply(&env(Command::UpdateTaskStatuses {
            updates: vec![late],
        }))
        .unwrap();
        assert_eq!(st.tasks["t1"].endpoint, at("10.0.6.2"));
    }

    #[test]
    fn a_report_about_another_nodes_task_is_refused() {
        let mut st = State::default();
        st.apply(&env(Command::CreateService {
            service: service("s", "web", 1),
        }))
        .unwrap();
        let mut other = task("t2", "s", 1);
        other.node_id = Some("m".into());
        st.apply(&env(Command::CreateTasks {
            tasks: vec![task("t1", "s", 1), other],
        }))
        .unwrap();
        let status = |id: &str| TaskStatus {
            task_id: id.into(),
            state: TaskState::Running,
            message: "running".into(),
            error: None,
            endpoint: None,
        };
        let err = st.apply(&env(Command::ReportTaskStatuses {
            node_id: "n".into(),
            updates: vec![status("t1"), status("t2")],
        }));
        assert_eq!(
            err,
            Err(StoreError::NotTheTasksNode {
                task: "t2".into(),
                owner: Some("m".into()),
                reporter: "n".into()
            })
        );
        assert_eq!(
            st.tasks["t1"].state,
            TaskState::Assigned,
            "a refused entry changes nothing, not even the node's own task"
        );
        assert_eq!(st.tasks["t2"].state, TaskState::Assigned);
        // Its own tasks (and tasks removed meanwhile) are accepted.
        st.apply(&env(Command::ReportTaskStatuses {
            node_id: "n".into(),
            updates: vec![status("t1"), status("gone")],
        }))
        .unwrap();
        assert_eq!(st.tasks["t1"].state, TaskState::Running);
        st.apply(&env(Command::ReportTaskStatuses {
            node_id: "m".into(),
            updates: vec![status("t2")],
        }))
        .unwrap();
        assert_eq!(st.tasks["t2"].state, TaskState::Running);
    }

    #[test]
    fn node_status_is_set_and_old_nodes_read_as_unknown() {
        let json = r#"{"id":"n","raft_id":1,"hostname":"h","role":"worker","availability":"active","addr":"","created_at_ms":0}"#;
        let node: swarmlet_proto::Node = serde_json::from_str(json).unwrap();
        assert_eq!(node.status.state, swarmlet_proto::NodeState::Unknown);
        let mut st = State::default();
        st.nodes.insert("n".into(), node);
        let down = swarmlet_proto::NodeStatus {
            state: swarmlet_proto::NodeState::Down,
            message: "heartbeat failure".into(),
        };
        st.apply(&env(Command::SetNodeStatus {
            node_id: "n".into(),
            status: down.clone(),
        }))
        .unwrap();
        assert_eq!(st.nodes["n"].status, down);
        assert_eq!(
            st.apply(&env(Command::SetNodeStatus {
                node_id: "x".into(),
                status: down,
            })),
            Err(StoreError::NoSuchNode("x".into()))
        );
    }

    #[test]
    fn old_single_status_entries_stay_readable() {
        let json = r#"{"proposal_id":0,"at_ms":1,"command":{"op":"update_task_status","task_id":"t1","state":"running","message":"running","error":null}}"#;
        let env: Envelope = serde_json::from_str(json).unwrap();
        assert!(matches!(env.command, Command::UpdateTaskStatus { .. }));
    }

    #[test]
    fn task_state_never_moves_backwards() {
        let mut st = State::default();
        st.apply(&env(Command::CreateService {
            service: service("s", "web", 1),
        }))
        .unwrap();
        let task = Task {
            id: "t1".into(),
            service_id: "s".into(),
            service_name: "web".into(),
            slot: 1,
            service_version: 1,
            node_id: Some("n".into()),
            desired_state: DesiredState::Running,
            state: TaskState::Assigned,
            message: String::new(),
            error: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            endpoint: None,
        };
        st.apply(&env(Command::CreateTasks { tasks: vec![task] }))
            .unwrap();
        let status = |state| Command::UpdateTaskStatus {
            task_id: "t1".into(),
            state,
            message: String::new(),
            error: None,
        };
        st.apply(&env(status(TaskState::Running))).unwrap();
        st.apply(&env(status(TaskState::Starting))).unwrap();
        assert_eq!(st.tasks["t1"].state, TaskState::Running);
    }
}
