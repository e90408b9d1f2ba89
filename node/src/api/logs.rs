//! `swarmlet service logs [-f] [--tail N] SERVICE`.
//!
//! A container's stdout and stderr are appended by its shim to
//! `DATA_DIR/containers/logs/<task_id>.log` on the task's node. The manager
//! answering the request finds the service's tasks and their nodes, reads
//! its own tasks' files directly and other nodes' over the cluster port
//! (`GET /v1/cluster/logs/{task_id}`, a manager-only route), and merges
//! them line by line, each line prefixed `web.1.<task id>@<node>    | ` as
//! Docker does. With `follow` every source keeps streaming, tasks placed
//! later join, and the stream ends when the client goes away or the
//! service is removed.
//!
//! Architecture invariant: a node serves only files named by a task ID
//! (letters and digits) in its own log directory; nothing else is read.

use std::collections::HashSet;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Frame;
use swarmlet_proto::{Image, Task};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::server::ApiState;
use super::ApiError;
use crate::body::{Body, BoxError};

pub use crate::runtime::container::container_log_path;

/// How often a followed log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// How much a read takes from the file at once.
const CHUNK: usize = 64 * 1024;

/// The most of a file's end read to find the last N lines.
const TAIL_WINDOW: u64 = 8 << 20;

/// What a log request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only the last N lines (None: all).
    pub tail: Option<usize>,
    /// Keep streaming what is appended.
    pub follow: bool,
}

impl LogQuery {
    /// `tail=N|all&follow=1`.
    pub fn parse(query: &str) -> Result<LogQuery, ApiError> {
        let mut q = LogQuery::default();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("tail", "all")) => q.tail = None,
                Some(("tail", n)) => {
                    q.tail = Some(n.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "tail={n:?} is not a number of lines (or \"all\")"
                        ))
                    })?)
                }
                Some(("follow", v)) => q.follow = v == "1" || v == "true",
                _ => {}
            }
        }
        Ok(q)
    }

    pub fn to_query(self) -> String {
        let tail = self
            .tail
            .map(|n| n.to_string())
            .unwrap_or_else(|| "all".into());
        format!("tail={tail}&follow={}", u8::from(self.follow))
    }
}

/// A task ID as it may name a log file: letters and digits only.
fn valid_task_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The byte offset where the last `n` lines of the file start (reading at
/// most `TAIL_WINDOW` of its end; a longer last line starts the window).
async fn tail_offset(f: &mut tokio::fs::File, len: u64, n: usize) -> std::io::Result<u64> {
    let start = len.saturating_sub(TAIL_WINDOW);
    f.seek(SeekFrom::Start(start)).await?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    f.read_to_end(&mut buf).await?;
    // Lines end with '\n'; a last line without one (still being written)
    // counts as a line too.
    let mut end = buf.len();
    if buf.last() == Some(&b'\n') {
        end -= 1;
    }
    let mut seen = 0;
    let mut pos = end;
    while pos > 0 {
        if buf[pos - 1] == b'\n' {
            seen += 1;
            if seen == n {
                return Ok(start + pos as u64);
            }
        }
        pos -= 1;
    }
    if n == 0 {
        return Ok(len);
    }
    // Fewer than n lines in the window: all of it (from a line start when
    // the window cut one).
    if start > 0 {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
    }
    Ok(start)
}

/// Sends the file's content (its last `q.tail` lines) to `tx` in chunks,
/// then, with `q.follow`, what is appended, until `tx`'s receiver is gone.
/// A file that does not exist yet is waited for when following (the task
/// may not have started) and then shown whole, else it is an empty log.
/// A file that shrinks (rotated or recreated) is read again from its start.
pub async fn stream_file(path: PathBuf, mut q: LogQuery, tx: mpsc::Sender<Bytes>) {
    let mut f = loop {
        match tokio::fs::File::open(&path).await {
            Ok(f) => break f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && q.follow => {
                // Whatever the file will hold was written after the
                // request: none of it is cut by `tail`.
                q.tail = None;
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_POLL) => continue,
                    _ = tx.closed() => return,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), "reading a container log: {e}");
                return;
            }
        }
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let mut pos = match q.tail {
        Some(n) => tail_offset(&mut f, len, n).await.unwrap_or(0),
        None => 0,
    };
    if f.seek(SeekFrom::Start(pos)).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        match f.read(&mut buf).await {
            Ok(0) => {
                if !q.follow {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    _ = tx.closed() => return,
                }
                let now = tokio::fs::metadata(&path).await.map(|m| m.len()).ok();
                if now.is_some_and(|n| n < pos) {
                    // Truncated or replaced: start over.
                    match tokio::fs::File::open(&path).await {
                        Ok(nf) => {
                            f = nf;
                            pos = 0;
                        }
                        Err(_) => continue,
                    }
                }
            }
            Ok(n) => {
                pos += n as u64;
                if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "reading a container log: {e}");
                return;
            }
        }
    }
}

/// A response whose body is what `rx` yields.
fn stream_response(rx: mpsc::Receiver<Bytes>) -> hyper::Response<Body> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let b = rx.recv().await?;
        Some((Ok::<_, BoxError>(Frame::data(b)), rx))
    });
    let mut resp = hyper::Response::new(http_body_util::StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `GET /v1/cluster/logs/{task_id}?tail=N&follow=1` on the cluster port
/// (managers only): this node's log of one task, raw.
pub fn node_log(
    st: &ApiState,
    task_id: &str,
    query: &str,
) -> Result<hyper::Response<Body>, ApiError> {
    if !valid_task_id(task_id) {
        return Err(ApiError::bad_request(format!(
            "{task_id:?} is not a task ID"
        )));
    }
    let q = LogQuery::parse(query)?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(stream_file(
        container_log_path(&st.data_dir, task_id),
        q,
        tx,
    ));
    Ok(stream_response(rx))
}

/// Docker's prefix of a task's lines: `web.1.abcdef123456@node1    | `.
fn prefix(t: &Task, node_name: &str) -> String {
    let short: String = t.id.chars().take(12).collect();
    format!("{}.{}.{short}@{node_name}    | ", t.service_name, t.slot)
}

/// Turns chunks of one source into whole lines, each with `prefix`; a last
/// line without a newline is flushed when the source ends.
struct Lines {
    prefix: Bytes,
    pending: Vec<u8>,
}

impl Lines {
    fn new(prefix: String) -> Lines {
        Lines {
            prefix: Bytes::from(prefix),
            pending: Vec::new(),
        }
    }

    /// The whole lines `chunk` completes, prefixed (None if none).
    fn push(&mut self, chunk: &[u8]) -> Option<Bytes> {
        self.pending.extend_from_slice(chunk);
        let last = self.pending.iter().rposition(|&b| b == b'\n')?;
        let rest = self.pending.split_off(last + 1);
        let done = std::mem::replace(&mut self.pending, rest);
        Some(self.prefixed(&done))
    }

    /// What is left (a last line without newline), prefixed and ended.
    fn finish(&mut self) -> Option<Bytes> {
        if self.pending.is_empty() {
            return None;
        }
        let mut done = std::mem::take(&mut self.pending);
        done.push(b'\n');
        Some(self.prefixed(&done))
    }

    fn prefixed(&self, lines: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(lines.len() + self.prefix.len() * 4);
        for line in lines.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(&self.prefix);
            out.extend_from_slice(line);
        }
        Bytes::from(out)
    }
}

/// One task's log to relay: the task, where its log is, its line prefix.
struct TaskLog {
    id: String,
    source: Source,
    lines: Lines,
}

/// Where one task's log comes from.
enum Source {
    Local(PathBuf),
    Remote { addr: String, node_id: String },
}

/// Copies one source's chunks into `out` as prefixed lines.
async fn relay(
    st: Arc<ApiState>,
    task_id: String,
    source: Source,
    q: LogQuery,
    mut lines: Lines,
    out: mpsc::Sender<Bytes>,
) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(8);
    // Aborted when this relay ends or is itself aborted (`follow` stops
    // every relay when the service is removed): a remote reader also holds
    // `out`, which must not outlive the stream.
    let _reader = AbortOnDropHandle::new(match source {
        Source::Local(path) => tokio::spawn(stream_file(path, q, tx)),
        Source::Remote { addr, node_id } => {
            let out = out.clone();
            let prefix = lines.prefix.clone();
            tokio::spawn(async move {
                if let Err(message) = fetch_remote(&st, &addr, &node_id, &task_id, q, tx).await {
                    let mut line = prefix.to_vec();
                    line.extend_from_slice(format!("[swarmlet: {message}]\n").as_bytes());
                    let _ = out.send(Bytes::from(line)).await;
                }
            })
        }
    });
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Some(c) => {
                    if let Some(b) = lines.push(&c) {
                        if out.send(b).await.is_err() {
                            break;
                        }
                    }
                }
                None => {
                    if let Some(b) = lines.finish() {
                        let _ = out.send(b).await;
                    }
                    break;
                }
            },
            _ = out.closed() => break,
        }
    }
}

/// Streams a task's log from the node at `addr` into `tx`.
async fn fetch_remote(
    st: &ApiState,
    addr: &str,
    node_id: &str,
    task_id: &str,
    q: LogQuery,
    tx: mpsc::Sender<Bytes>,
) -> Result<(), String> {
    let pool = st
        .cluster_port
        .client()
        .ok_or("this manager has no cluster certificate yet")?;
    let path = format!("/v1/cluster/logs/{task_id}?{}", q.to_query());
    let target = crate::transport::Target::Node(node_id.to_string());
    let resp = pool
        .stream(
            addr,
            &target,
            http::Method::GET,
            &path,
            crate::transport::client::full(Bytes::new()),
        )
        .await
        .map_err(|e| format!("cannot read this task's log on its node: {e}"))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    if !(200..300).contains(&status) {
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<swarmlet_proto::api::ErrorBody>(&bytes)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        return Err(format!(
            "its node refused to send this task's log: {message}"
        ));
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the log stream from its node broke: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if tx.send(data).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// `GET /v1/services/{key}/logs?tail=N&follow=1`: the merged, prefixed
/// logs of every task of the service that was placed on a node. With
/// `follow`, tasks that start later (a scale-up, a replacement) join the
/// stream, and it ends when the service is removed.
pub fn service_logs(
    st: &Arc<ApiState>,
    key: &str,
    query: &str,
) -> Result<hyper::Response<Body>, ApiError> {
    let q = LogQuery::parse(query)?;
    let sources = sources_of(st, key, &HashSet::new())?.ok_or_else(|| {
        ApiError::not_found(format!(
            "service {key} not found; \"swarmlet service ls\" lists the services"
        ))
    })?;
    let (out, rx) = mpsc::channel::<Bytes>(16);
    let st = st.clone();
    let key = key.to_string();
    tokio::spawn(async move {
        if q.follow {
            follow(st, key, sources, q, out).await;
        } else {
            // One task after another, so each task's lines stay together.
            for TaskLog { id, source, lines } in sources {
                relay(st.clone(), id, source, q, lines, out.clone()).await;
                if out.is_closed() {
                    return;
                }
            }
        }
    });
    Ok(stream_response(rx))
}

/// How often a followed service's task list is read again for new tasks.
const FOLLOW_TASKS_POLL: Duration = Duration::from_millis(500);

/// Streams every task's log as it grows, adds tasks as they are placed,
/// and stops every relay when the service is gone or the client leaves.
async fn follow(
    st: Arc<ApiState>,
    key: String,
    first: Vec<TaskLog>,
    q: LogQuery,
    out: mpsc::Sender<Bytes>,
) {
    let mut relays = tokio::task::JoinSet::new();
    let mut seen = HashSet::new();
    let mut batch = Some(first);
    // `--tail` applies to the tasks there were when the stream began; a
    // task placed later is shown whole (all of its output is new).
    let mut task_q = q;
    loop {
        for TaskLog { id, source, lines } in batch.take().unwrap_or_default() {
            if seen.insert(id.clone()) {
                relays.spawn(relay(st.clone(), id, source, task_q, lines, out.clone()));
            }
        }
        task_q = LogQuery { tail: None, ..q };
        tokio::select! {
            _ = out.closed() => break,
            _ = tokio::time::sleep(FOLLOW_TASKS_POLL) => {}
        }
        match sources_of(&st, &key, &seen) {
            Ok(Some(list)) => batch = Some(list),
            // Removed (or this node no longer a manager): the stream ends.
            Ok(None) | Err(_) => break,
        }
    }
    relays.abort_all();
}

/// The log sources of a service's placed tasks, in slot order, but for the
/// tasks in `skip` (already relayed); None if there is no such service.
fn sources_of(
    st: &Arc<ApiState>,
    key: &str,
    skip: &HashSet<String>,
) -> Result<Option<Vec<TaskLog>>, ApiError> {
    let cluster = st.cluster()?;
    let state = cluster.store.read();
    let Some(s) = state.find_service(key) else {
        return Ok(None);
    };
    if let Image::Wasm { .. } = s.spec.image {
        return Err(ApiError::bad_request(format!(
            "service {} runs a wasm component, and swarmlet keeps no logs for wasm services yet (a guest's stderr goes to the daemon's own log); service logs shows container services' output",
            s.spec.name
        )));
    }
    let mut tasks: Vec<&Task> = state
        .tasks_of(&s.id)
        .filter(|t| !skip.contains(&t.id))
        .collect();
    tasks.sort_by_key(|t| (t.slot, t.created_at_ms));
    let mut sources = Vec::new();
    for t in tasks {
        let Some(node_id) = &t.node_id else { continue };
        let Some(node) = state.nodes.get(node_id) else {
            continue;
        };
        let source = if *node_id == st.identity.node_id {
            Source::Local(container_log_path(&st.data_dir, &t.id))
        } else {
            Source::Remote {
                addr: node.addr.clone(),
                node_id: node_id.clone(),
            }
        };
        sources.push(TaskLog {
            id: t.id.clone(),
            source,
            lines: Lines::new(prefix(t, &node.hostname)),
        });
    }
    Ok(Some(sources))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("swarmlet-logs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    async fn collect(mut rx: mpsc::Receiver<Bytes>) -> String {
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.extend_from_slice(&b);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn the_log_path_is_the_runtimes() {
        assert_eq!(
            container_log_path(std::path::Path::new("/var/lib/swarmlet"), "abc123"),
            PathBuf::from("/var/lib/swarmlet/containers/logs/abc123.log")
        );
        assert!(valid_task_id("abc123"));
        assert!(!valid_task_id("../etc/passwd"));
        assert!(!valid_task_id(""));
    }

    #[test]
    fn queries() {
        assert_eq!(LogQuery::parse("").unwrap(), LogQuery::default());
        let q = LogQuery::parse("tail=5&follow=1").unwrap();
        assert_eq!((q.tail, q.follow), (Some(5), true));
        assert_eq!(LogQuery::parse(&q.to_query()).unwrap(), q);
        assert_eq!(LogQuery::parse("tail=all").unwrap().tail, None);
        assert!(LogQuery::parse("tail=x").is_err());
    }

    #[tokio::test]
    async fn tail_reads_the_last_lines_and_all_without_it() {
        let d = temp("tail");
        let p = d.join("t.log");
        std::fs::write(&p, "one\ntwo\nthree\nfour\n").unwrap();
        for (tail, want) in [
            (Some(2), "three\nfour\n"),
            (Some(0), ""),
            (Some(10), "one\ntwo\nthree\nfour\n"),
            (None, "one\ntwo\nthree\nfour\n"),
        ] {
            let (tx, rx) = mpsc::channel(8);
            stream_file(
                p.clone(),
                LogQuery {
                    tail,
                    follow: false,
                },
                tx,
            )
            .await;
            assert_eq!(collect(rx).await, want, "tail {tail:?}");
        }
        // A last line still being written counts as a line.
        std::fs::write(&p, "a\nb\npartial").unwrap();
        let (tx, rx) = mpsc::channel(8);
        stream_file(
            p.clone(),
            LogQuery {
                tail: Some(1),
                follow: false,
            },
            tx,
        )
        .await;
        assert_eq!(collect(rx).await, "partial");
        // No file: an empty log.
        let (tx, rx) = mpsc::channel(8);
        stream_file(d.join("none.log"), LogQuery::default(), tx).await;
        assert_eq!(collect(rx).await, "");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn follow_streams_appends_waits_for_the_file_and_ends_with_the_reader() {
        use std::io::Write as _;
        let d = temp("follow");
        let p = d.join("t.log");
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(stream_file(
            p.clone(),
            LogQuery {
                tail: Some(1),
                follow: true,
            },
            tx,
        ));
        // The file appears after the follower started (a task starting).
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(&p, "old\nlast\n").unwrap();
        let mut got = String::new();
        for _ in 0..100 {
            if got.contains("last\n") {
                break;
            }
            let b = rx.recv().await.expect("the follower sends");
            got.push_str(&String::from_utf8_lossy(&b));
        }
        // The last line (or, if the follower opened the file between its
        // creation and the write, all of it).
        assert!(got.ends_with("last\n"), "{got:?}");
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        writeln!(f, "appended").unwrap();
        let b = rx.recv().await.expect("the appended line");
        assert_eq!(&b[..], b"appended\n");
        // Truncated (recreated): read again from the start.
        std::fs::write(&p, "new\n").unwrap();
        let b = rx.recv().await.expect("the recreated file");
        assert_eq!(&b[..], b"new\n");
        drop(rx);
        task.await.expect("the follower ends once nobody reads");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn lines_are_prefixed_whole() {
        let mut l = Lines::new("web.1.abc@n1    | ".into());
        assert_eq!(l.push(b"hel"), None);
        assert_eq!(
            l.push(b"lo\nwor").unwrap(),
            Bytes::from_static(b"web.1.abc@n1    | hello\n")
        );
        assert_eq!(
            l.push(b"ld\na\n").unwrap(),
            Bytes::from_static(b"web.1.abc@n1    | world\nweb.1.abc@n1    | a\n")
        );
        l.push(b"end");
        assert_eq!(
            l.finish().unwrap(),
            Bytes::from_static(b"web.1.abc@n1    | end\n")
        );
        assert_eq!(l.finish(), None);
    }
}
