//! containerd-shim-runc-v2 without containerd: launching it for a bundle,
//! its task API over ttrpc, and the events sink it pushes exits to.
//!
//! Launch (as containerd 1.6 does, /work/shared/CONTAINERS.md): cwd = the
//! bundle, a `log` fifo there that we read (the shim blocks until a reader
//! opens it, and dies without it), `TTRPC_ADDRESS` = our events socket,
//! `containerd-shim-runc-v2 -namespace NS -id ID -address ADDR start`,
//! which prints the shim's socket (also written to `BUNDLE/address`) and
//! returns while the shim itself lives on, re-parented: it outlives this
//! process, so a restarted node reconnects through `BUNDLE/address`.
//!
//! The task service is `containerd.task.v2.Task` in containerd 1.6/1.7's
//! shims and `containerd.task.v3.Task` in 2.x's; the messages are the same.
//! `containerd-shim-protos` 0.12 generates a client for v3 only, so we send
//! its messages through the raw ttrpc client under the name the shim
//! answers to (tried at connect: v2, then v3).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::{Message, MessageFull};
use containerd_shim_protos::shim_async::{create_events, Events};
use containerd_shim_protos::ttrpc;
use containerd_shim_protos::ttrpc::r#async::{Client, Server, TtrpcContext};
use tokio::sync::watch;

use super::error::{ContainerError, ExitStatus};

/// The shim binary's name (on the PATH; containerd's Debian package).
pub const SHIM_BINARY: &str = "containerd-shim-runc-v2";

const TASK_SERVICES: [&str; 2] = ["containerd.task.v2.Task", "containerd.task.v3.Task"];
const NAMESPACE_KEY: &str = "containerd-namespace-ttrpc";
/// A bound on each call, so a wedged shim cannot hang a supervisor forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Exit watchers per container ID, fed by the events sink.
#[derive(Default)]
pub struct Exits {
    watchers: Mutex<HashMap<String, watch::Sender<Option<ExitStatus>>>>,
}

impl Exits {
    /// The watcher of `id`, created empty if new.
    pub fn watch(&self, id: &str) -> watch::Receiver<Option<ExitStatus>> {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    pub fn record(&self, id: &str, status: ExitStatus) {
        let w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = w.get(id) {
            tx.send_replace(Some(status));
        }
    }

    pub fn forget(&self, id: &str) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        w.remove(id);
    }
}

/// The events service the shims publish to (`Forward`): exits of init
/// processes in our namespace go to `Exits`; the rest is logged.
struct EventSink {
    namespace: String,
    exits: Arc<Exits>,
}

#[async_trait::async_trait]
impl Events for EventSink {
    async fn forward(
        &self,
        _ctx: &TtrpcContext,
        req: api::ForwardRequest,
    ) -> ttrpc::Result<containerd_shim_protos::protobuf::well_known_types::empty::Empty> {
        let Some(envelope) = req.envelope.as_ref() else {
            return Ok(Default::default());
        };
        tracing::debug!(topic = %envelope.topic, namespace = %envelope.namespace, "shim event");
        if envelope.namespace == self.namespace && envelope.topic == "/tasks/exit" {
            if let Some(any) = envelope.event.as_ref() {
                match TaskExit::parse_from_bytes(&any.value) {
                    // An exec'd process has its own ID; only the container's
                    // main process ends the container.
                    Ok(exit) if exit.id == exit.container_id || exit.id.is_empty() => {
                        self.exits
                            .record(&exit.container_id, ExitStatus(exit.exit_status));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("undecodable /tasks/exit event: {e}"),
                }
            }
        }
        Ok(Default::default())
    }
}

/// Serves the events sink at `socket` (the shims' `TTRPC_ADDRESS`). A stale
/// socket file (a previous run of the node) is replaced.
pub async fn serve_events(
    socket: &Path,
    namespace: &str,
    exits: Arc<Exits>,
) -> Result<Server, ContainerError> {
    let _ = std::fs::remove_file(socket);
    let sink = Arc::new(EventSink {
        namespace: namespace.to_string(),
        exits,
    });
    let fail = |e: ttrpc::Error| ContainerError::Shim {
        id: String::new(),
        message: format!("serving the events socket {}: {e}", socket.display()),
    };
    let mut server = Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .map_err(fail)?
        .register_service(create_events(sink));
    server.start().await.map_err(fail)?;
    Ok(server)
}

/// How to launch a shim for one container.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub binary: &'a Path,
    pub bundle: &'a Path,
    pub id: &'a str,
    pub namespace: &'a str,
    /// The (never listening) containerd address; the shim derives its
    /// socket's name from it, the namespace and the ID.
    pub address: &'a Path,
    /// Our events socket.
    pub ttrpc_address: &'a Path,
}

/// Starts copying the shim's `log` fifo to `BUNDLE/shim.log`, creating the
/// fifo if needed. The fifo is opened read-write so that it never reports
/// end-of-file between writers; the returned task copies until aborted.
pub fn follow_shim_log(bundle: &Path) -> Result<tokio::task::JoinHandle<()>, ContainerError> {
    let fifo = bundle.join("log");
    if !fifo.exists() {
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())
            .map_err(|e| ContainerError::io("creating", &fifo, std::io::Error::other(e)))?;
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(ContainerError::io(
                "creating fifo",
                &fifo,
                std::io::Error::last_os_error(),
            ));
        }
    }
    let mut rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&fifo)
        .map_err(|e| ContainerError::io("opening", &fifo, e))?;
    let out_path = bundle.join("shim.log");
    Ok(tokio::spawn(async move {
        let out = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .await;
        match out {
            Ok(mut out) => {
                if let Err(e) = tokio::io::copy(&mut rx, &mut out).await {
                    tracing::debug!("shim log {}: {e}", out_path.display());
                }
            }
            Err(e) => tracing::warn!("shim log {}: {e}", out_path.display()),
        }
    }))
}

/// Runs `containerd-shim-runc-v2 … start`; returns the shim's socket
/// address (`unix:///run/containerd/s/…`).
pub async fn launch(l: &Launch<'_>) -> Result<String, ContainerError> {
    let out = shim_command(l, "start")
        .output()
        .await
        .map_err(|e| spawn_error(l, e))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || stdout.is_empty() {
        return Err(ContainerError::Shim {
            id: l.id.to_string(),
            message: format!(
                "`start` failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                shim_log_tail(l.bundle)
            ),
        });
    }
    Ok(stdout)
}

/// Runs `containerd-shim-runc-v2 … delete` in the bundle: what containerd
/// does when a shim is gone (runc delete --force, unmount the rootfs).
pub async fn delete_with_binary(l: &Launch<'_>) -> Result<(), ContainerError> {
    let out = shim_command(l, "delete")
        .output()
        .await
        .map_err(|e| spawn_error(l, e))?;
    if !out.status.success() {
        return Err(ContainerError::Shim {
            id: l.id.to_string(),
            message: format!(
                "`delete` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

fn shim_command(l: &Launch<'_>, action: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(l.binary);
    cmd.current_dir(l.bundle)
        .env("TTRPC_ADDRESS", l.ttrpc_address)
        .arg("-namespace")
        .arg(l.namespace)
        .arg("-id")
        .arg(l.id)
        .arg("-address")
        .arg(l.address)
        .arg("-publish-binary")
        .arg("/bin/true")
        .arg(action)
        .stdin(std::process::Stdio::null());
    cmd
}

fn spawn_error(l: &Launch<'_>, e: std::io::Error) -> ContainerError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ContainerError::ToolMissing {
            tool: l.binary.display().to_string(),
            hint: "install Debian's containerd package (it ships containerd-shim-runc-v2) and runc; scripts/setup.sh does".to_string(),
        }
    } else {
        ContainerError::Shim {
            id: l.id.to_string(),
            message: format!("cannot run {}: {e}", l.binary.display()),
        }
    }
}

fn shim_log_tail(bundle: &Path) -> String {
    let tail = super::logs::tail(&bundle.join("shim.log"), 10);
    if tail.is_empty() {
        String::new()
    } else {
        format!("; shim log:\n{tail}")
    }
}

/// The container's stdout and stderr, both appended to the one file `log`.
///
/// Not as one `file://` URI: for that the shim (containerd 1.6, Debian 12's)
/// opens the file once for both streams and hands the stdout copier the bare
/// descriptor, which it closes when stdout ends, while the stderr copier may
/// still have output to write. That output is lost ("error copying stderr"
/// in shim.log): seen here as a crashed nginx whose `[emerg]` line never
/// reached its log in about one start in three under load. Two plain paths
/// that differ as strings but name the same file make the shim open it once
/// per stream (`O_APPEND`, so whole writes still interleave, as Docker's
/// json-file log does), and each copier closes only its own. Plain paths are
/// opened, not created, so the file is created here.
fn log_stdio(log: &Path) -> std::io::Result<(String, String)> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else {
        return Err(std::io::Error::other("not a file path"));
    };
    let stderr = dir.join(".").join(name);
    Ok((log.display().to_string(), stderr.display().to_string()))
}

/// A connection to one shim's task service.
#[derive(Clone)]
pub struct ShimClient {
    client: Client,
    service: &'static str,
    namespace: String,
    id: String,
    /// The shim's own process ID (from Connect).
    pub shim_pid: u32,
}

impl ShimClient {
    /// Connects to `address` and picks the task service name the shim serves.
    pub async fn connect(
        address: &str,
        namespace: &str,
        id: &str,
    ) -> Result<ShimClient, ContainerError> {
        let client = Client::connect(address)
            .await
            .map_err(|e| ContainerError::Shim {
                id: id.to_string(),
                message: format!("connecting to {address}: {e}"),
            })?;
        let mut last = String::new();
        for service in TASK_SERVICES {
            let mut c = ShimClient {
                client: client.clone(),
                service,
                namespace: namespace.to_string(),
                id: id.to_string(),
                shim_pid: 0,
            };
            let req = api::ConnectRequest {
                id: id.to_string(),
                ..Default::default()
            };
            match c.call::<_, api::ConnectResponse>("Connect", &req).await {
                Ok(resp) => {
                    c.shim_pid = resp.shim_pid;
                    tracing::debug!(%id, service, shim_pid = resp.shim_pid, "connected to shim");
                    return Ok(c);
                }
                Err(CallError::Status(code, msg))
                    if code == ttrpc::Code::UNIMPLEMENTED || code == ttrpc::Code::NOT_FOUND =>
                {
                    last = msg;
                }
                Err(e) => return Err(e.into_error(id, "Connect")),
            }
        }
        Err(ContainerError::Shim {
            id: id.to_string(),
            message: format!("the shim at {address} serves neither task v2 nor v3: {last}"),
        })
    }

    async fn call<Req: MessageFull, Resp: MessageFull>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, CallError> {
        let payload = req
            .write_to_bytes()
            .map_err(|e| CallError::Other(e.to_string()))?;
        let mut md = HashMap::new();
        md.insert(NAMESPACE_KEY.to_string(), vec![self.namespace.clone()]);
        let mut creq = ttrpc::Request::new();
        creq.service = self.service.to_string();
        creq.method = method.to_string();
        creq.timeout_nano = CALL_TIMEOUT.as_nanos() as i64;
        creq.metadata = ttrpc::context::to_pb(md);
        creq.payload = payload;
        let res = self.client.request(creq).await.map_err(|e| match e {
            ttrpc::Error::RpcStatus(s) => CallError::Status(s.code(), s.message().to_string()),
            other => CallError::Other(other.to_string()),
        })?;
        Resp::parse_from_bytes(&res.payload).map_err(|e| CallError::Other(e.to_string()))
    }

    async fn call_for<Req: MessageFull, Resp: MessageFull>(
        &self,
        method: &'static str,
        req: &Req,
    ) -> Result<Resp, ContainerError> {
        self.call(method, req)
            .await
            .map_err(|e| e.into_error(&self.id, method))
    }

    /// Create: runc creates the container (its process waits before exec).
    pub async fn create(&self, bundle: &Path, log: &Path) -> Result<u32, CallError> {
        let (stdout, stderr) = log_stdio(log)
            .map_err(|e| CallError::Other(format!("creating the log {}: {e}", log.display())))?;
        let req = api::CreateTaskRequest {
            id: self.id.clone(),
            bundle: bundle.display().to_string(),
            stdout,
            stderr,
            ..Default::default()
        };
        let resp: api::CreateTaskResponse = self.call("Create", &req).await?;
        Ok(resp.pid)
    }

    pub async fn start(&self) -> Result<u32, ContainerError> {
        let req = api::StartRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        let resp: api::StartResponse = self.call_for("Start", &req).await?;
        Ok(resp.pid)
    }

    pub async fn state(&self) -> Result<api::StateResponse, ContainerError> {
        let req = api::StateRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        self.call_for("State", &req).await
    }

    pub async fn kill(&self, signal: i32, all: bool) -> Result<(), ContainerError> {
        let req = api::KillRequest {
            id: self.id.clone(),
            signal: signal as u32,
            all,
            ..Default::default()
        };
        let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty =
            self.call_for("Kill", &req).await?;
        Ok(())
    }

    /// Delete: runc delete (the container's cgroup and state go).
    pub async fn delete(&self) -> Result<ExitStatus, ContainerError> {
        let req = api::DeleteRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        let resp: api::DeleteResponse = self.call_for("Delete", &req).await?;
        Ok(ExitStatus(resp.exit_status))
    }

    /// Shutdown: the shim exits (once it holds no container).
    pub async fn shutdown(&self) -> Result<(), ContainerError> {
        let req = api::ShutdownRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        match self
            .call::<_, containerd_shim_protos::protobuf::well_known_types::empty::Empty>(
                "Shutdown", &req,
            )
            .await
        {
            Ok(_) => Ok(()),
            // The shim exits while answering: a closed connection is success.
            Err(CallError::Other(_)) => Ok(()),
            Err(e) => Err(e.into_error(&self.id, "Shutdown")),
        }
    }
}

/// A failed ttrpc call: the shim's status, or the transport's error.
#[derive(Debug)]
pub enum CallError {
    Status(ttrpc::Code, String),
    Other(String),
}

impl CallError {
    pub fn message(&self) -> &str {
        match self {
            CallError::Status(_, m) | CallError::Other(m) => m,
        }
    }

    pub fn into_error(self, id: &str, method: &'static str) -> ContainerError {
        ContainerError::Rpc {
            id: id.to_string(),
            method,
            message: self.message().to_string(),
        }
    }
}

/// Whether process `pid` is alive (and not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// `BUNDLE/address`, written by the shim's `start`.
pub fn read_address(bundle: &Path) -> Option<String> {
    std::fs::read_to_string(bundle.join("address"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The socket file behind a `unix://` address.
pub fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::log_stdio;

    #[test]
    fn stdout_and_stderr_name_one_created_file_by_two_strings() {
        let dir = std::env::temp_dir().join(format!("sw-log-stdio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("t1.log");
        let (out, err) = log_stdio(&log).unwrap();
        assert_ne!(
            out, err,
            "one string would make the shim share one descriptor"
        );
        let (a, b) = (
            std::fs::metadata(&out).unwrap(),
            std::fs::metadata(&err).unwrap(),
        );
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "{out} and {err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
