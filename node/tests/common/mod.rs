//! What the container integration tests (`container.rs`,
//! `container_tasks.rs`) both look at: a container's answer and its shim;
//! and the clean-up of what earlier test processes left.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET /` at `addr` over HTTP/1.0, the whole answer; polls (bounded, ~30 s)
/// until something accepts the connection.
pub fn get(addr: SocketAddr) -> String {
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("timeout");
                s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                    .expect("send");
                let mut body = String::new();
                s.read_to_string(&mut body).expect("read response");
                return body;
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing accepted a connection at {addr} within 60 s: {last}");
}

/// Shim processes of (namespace, id), found in /proc by their arguments.
pub fn shims(namespace: &str, id: &str) -> Vec<i32> {
    swarmlet::runtime::container::sweep::shims()
        .into_iter()
        .filter(|s| s.namespace == namespace && s.id == id)
        .map(|s| s.pid)
        .collect()
}

/// Removes what test processes that are gone left in the temp dir: entries
/// named `<prefix><pid>…` for one of `prefixes`, whose pid no longer runs.
pub fn sweep_stale(prefixes: &[&str]) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rest = prefixes.iter().find_map(|p| name.strip_prefix(p));
        let Some(pid) = rest
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
