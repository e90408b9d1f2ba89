//! The node's listeners: no client API on the cluster port, limits that a
//! slowloris or oversized heads cannot get past, published ports that close
//! cleanly, and a SIGTERM that lets requests in flight finish.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use swarmlet_e2e::{swarmlet_bin, Node};

const TLS_MESSAGE: &str = "needs a TLS client certificate";

/// Writes `request` on a new connection to `addr` and reads until the
/// daemon closes it. A write error (the daemon answered and closed before
/// reading everything) is not an error: what was answered is returned.
fn tcp_raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn status_of(response: &str) -> Option<u16> {
    response
        .strip_prefix("HTTP/1.1 ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn assert_hello(node: &Node, port: u16) {
    let (status, body) = node.get(port, "/ping").expect("request to hello");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from hello."), "{body}");
}

#[test]
fn the_cluster_port_serves_no_client_api_and_the_socket_is_0660() {
    let mut node = Node::start("n1");
    let cluster = node.cluster_addr();

    // List, create, remove: each refused with the reason, nothing changes.
    let create = r#"{"name":"evil","image":{"digest":"sha256:00"},"replicas":1,"ports":[]}"#;
    let requests = [
        "GET /v1/services HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
        format!(
            "POST /v1/services HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{create}",
            create.len()
        ),
        "DELETE /v1/services/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
        "POST /v1/swarm/init HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
            .to_string(),
    ];
    // Not in a swarm yet (no certificates): plain HTTP, answered 403.
    for request in &requests {
        let resp = tcp_raw(&cluster, request.as_bytes());
        assert_eq!(status_of(&resp), Some(403), "{request:?} got {resp}");
        assert!(resp.contains(TLS_MESSAGE), "{resp}");
    }
    let info = node.ok(&["info"]);
    assert!(
        !info.contains("Swarm: active"),
        "the plain requests changed nothing: {info}"
    );

    node.ok(&["init"]);
    node.create("hello", "hello", &["-p", "8080:80"]);
    // In a swarm the port speaks only TLS: a plain-HTTP client gets no HTTP
    // answer at all (the TLS handshake fails), so nothing leaks or changes.
    for request in &requests {
        let resp = tcp_raw(&cluster, request.as_bytes());
        assert_eq!(status_of(&resp), None, "{request:?} got {resp}");
        assert!(!resp.contains("hello"), "no service data leaks: {resp}");
    }
    let ls = node.ok(&["service", "ls"]);
    assert_eq!(ls.lines().count(), 2, "only hello, still there: {ls}");
    assert!(ls.contains("hello"), "{ls}");
    assert_hello(&node, 8080);

    // The CLI pointed at the cluster port says why and what to do.
    for host in [
        cluster.clone(),
        node.ip.to_string(),
        format!("tcp://{cluster}"),
    ] {
        for env in [false, true] {
            let mut cmd = std::process::Command::new(swarmlet_bin());
            if env {
                cmd.env("SWARMLET_HOST", &host);
            } else {
                cmd.env_remove("SWARMLET_HOST").args(["-H", &host]);
            }
            let out = cmd.args(["service", "ls"]).output().unwrap();
            assert!(!out.status.success(), "{host}: remote control must fail");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(TLS_MESSAGE), "{host}: {err}");
            assert!(err.contains("ssh"), "says to run it on the node: {err}");
        }
    }

    // The socket is 0660 whatever the umask the daemon starts under.
    let mode = |n: &Node| {
        std::fs::metadata(n.socket())
            .expect("the API socket exists")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&node), 0o660);
    assert!(node.sigterm().success());
    node.umask = Some(0);
    node.spawn();
    assert_eq!(mode(&node), 0o660, "under umask 000");
    node.ok(&["service", "ls"]);
}

/// Raises this test process's soft fd limit (thousands of client sockets).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain rlimit calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= 6000,
        "this test opens ~4,000 sockets; the fd hard limit is {}",
        lim.rlim_cur
    );
}

/// Opens `n` connections with `open` and keeps each one sending a header
/// line now and then without ever finishing its request head; reconnects
/// those the daemon closes. Runs until `stop`; counts full rounds in `rounds`
/// and returns how many connections it had to reopen.
fn slowloris<S: Write + Send + 'static>(
    n: usize,
    open: impl Fn() -> std::io::Result<S> + Send + 'static,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut conns: Vec<Option<S>> = (0..n).map(|_| None).collect();
        let mut reconnects = 0;
        while !stop.load(Ordering::SeqCst) {
            for c in conns.iter_mut() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                // An evicted connection takes a write or two to notice.
                let alive = match c {
                    Some(s) => s.write_all(b"X-Slow: 1\r\n").is_ok(),
                    None => false,
                };
                if !alive {
                    if c.is_some() {
                        reconnects += 1;
                    }
                    *c = open().ok().and_then(|mut s| {
                        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").ok()?;
                        Some(s)
                    });
                }
            }
            rounds.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
        }
        reconnects
    })
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn slowloris_on_a_published_port_and_the_api_socket_starves_no_one() {
    raise_nofile();
    // 500 connections per listener, so 2,000 attackers fill each one 4×.
    let node = Node::start_with("n1", &["--max-connections", "500"]);
    node.ok(&["init"]);
    node.create("hello", "hello", &["-p", "8080:80"]);
    let pid = node.pid().expect("daemon pid");

    let stop = Arc::new(AtomicBool::new(false));
    let (web_rounds, api_rounds) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let port_addr = SocketAddr::new(node.ip.into(), 8080);
    let web = slowloris(
        2000,
        move || {
            let s = TcpStream::connect_timeout(&port_addr, Duration::from_secs(10))?;
            s.set_write_timeout(Some(Duration::from_secs(5)))?;
            Ok(s)
        },
        stop.clone(),
        web_rounds.clone(),
    );
    let sock = node.socket();
    let api = slowloris(
        2000,
        move || {
            let s = UnixStream::connect(&sock)?;
            s.set_write_timeout(Some(Duration::from_secs(5)))?;
            Ok(s)
        },
        stop.clone(),
        api_rounds.clone(),
    );

    // While both attacks run, normal clients are answered, again and again.
    // (Until both attackers have gone three times over their 2,000
    // connections: every connection opened, evicted ones reopened.)
    let mut most_fds = 0;
    let mut answered = 0;
    node.wait_until("both attackers to make three rounds", || {
        assert_hello(&node, 8080);
        let ls = node.ok(&["service", "ls"]);
        assert!(ls.contains("1/1"), "{ls}");
        answered += 1;
        most_fds = most_fds.max(open_fds(pid));
        web_rounds.load(Ordering::SeqCst) >= 3 && api_rounds.load(Ordering::SeqCst) >= 3
    });
    stop.store(true, Ordering::SeqCst);
    let web_reconnects = web.join().expect("web attacker");
    let api_reconnects = api.join().expect("api attacker");
    // The caps held: evicted attackers had to reconnect, and the daemon never
    // held anything near 4,000 connections.
    assert!(
        web_reconnects >= 1500 && api_reconnects >= 1500,
        "each listener evicted the attackers beyond its 500 ({web_reconnects}, {api_reconnects} reconnects)"
    );
    eprintln!("normal clients answered {answered} times during the attack; daemon fds peaked at {most_fds}");
    assert!(
        most_fds < 1500,
        "two listeners capped at 500 each, plus the node's own files: {most_fds} fds open"
    );

    // And the daemon is fine after.
    assert_hello(&node, 8080);
    node.ok(&["service", "scale", "hello=2"]);
    node.wait_until("hello to run 2 replicas", || {
        node.ok(&["service", "ls"]).contains("2/2")
    });
    assert!(!node.log().contains("panicked"), "{}", node.log());
}

#[test]
fn ten_thousand_headers_or_a_megabyte_header_line_are_refused() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    node.create("hello", "hello", &["-p", "8080:80"]);
    let port = format!("{}:8080", node.ip);

    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Connection: close\r\n\r\n");
    let long = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(1 << 20)
    );
    for (what, req) in [("10,000 headers", &many), ("a 1 MB header line", &long)] {
        let resp = tcp_raw(&port, req.as_bytes());
        let status = status_of(&resp);
        assert!(
            matches!(status, Some(431) | Some(400)),
            "{what} on a published port: {}",
            &resp[..resp.len().min(300)]
        );
        let resp = node.api_raw(req.replace("GET /", "GET /v1/services").as_bytes());
        assert!(
            matches!(status_of(&resp), Some(431) | Some(400)),
            "{what} on the API socket: {}",
            &resp[..resp.len().min(300)]
        );
        assert_hello(&node, 8080);
        node.ok(&["service", "ls"]);
    }

    // A JSON API request body is capped too (1 MiB), with a 413 that says so.
    let body = format!("{{\"replicas\": 1, \"pad\": \"{}\"}}", "a".repeat(2 << 20));
    let resp = node.api_raw(
        format!(
            "POST /v1/services/hello/scale HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(
        status_of(&resp),
        Some(413),
        "{}",
        &resp[..resp.len().min(300)]
    );
    assert!(resp.contains("larger than 1024 KiB"), "{resp}");
    assert_hello(&node, 8080);
}

#[test]
fn silent_and_idle_keep_alive_connections_are_closed() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    node.create("hello", "hello", &["-p", "8080:80"]);

    // A connection that never sends anything (header-read / idle timeout),
    // one that sends half a head (header-read timeout) and a keep-alive
    // connection after its response (idle timeout): the daemon closes all
    // three by itself. (The read timeout only bounds a failing test.)
    let silent = TcpStream::connect((node.ip, 8080)).unwrap();
    let mut half = TcpStream::connect((node.ip, 8080)).unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut kept = TcpStream::connect((node.ip, 8080)).unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let first = read_response(&mut kept).expect("the keep-alive request is answered");
    assert!(first.contains("hello from"), "{first}");
    for (what, mut s) in [
        ("silent", silent),
        ("half a head", half),
        ("idle keep-alive", kept),
    ] {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{what} connection was not closed by the daemon: {e}"),
        }
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
            "{what}: {rest}"
        );
    }
    assert_hello(&node, 8080);
}

/// Reads one HTTP/1.1 response with a Content-Length body from `s`.
fn read_response(s: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("closed after {:?}", String::from_utf8_lossy(&buf)),
            ));
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        let mut body = Vec::new();
        while !body.ends_with(b"0\r\n\r\n") {
            if s.read(&mut byte)? == 0 {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "closed mid-body",
                ));
            }
            body.push(byte[0]);
        }
        return Ok(format!("{head}{}", String::from_utf8_lossy(&body)));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(format!("{head}{}", String::from_utf8_lossy(&body)))
}

#[test]
fn a_removed_services_keep_alive_connections_are_closed() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    node.create("hello", "hello", &["-p", "8080:80"]);
    node.create("faulty", "faulty", &["-p", "8081:80"]);

    // An idle keep-alive connection to hello.
    let mut idle = TcpStream::connect((node.ip, 8080)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    idle.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let first = read_response(&mut idle).expect("first response");
    assert!(first.contains("hello from hello.1"), "{first}");

    // A keep-alive connection to faulty with a slow request in flight
    // (/sleep: cut by the 2s wasm timeout with a 504).
    let mut busy = TcpStream::connect((node.ip, 8081)).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    busy.write_all(b"GET /sleep HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();

    node.ok(&["service", "rm", "hello", "faulty"]);
    node.wait_until("the removed ports to stop accepting", || {
        TcpStream::connect((node.ip, 8080)).is_err() && TcpStream::connect((node.ip, 8081)).is_err()
    });

    // The idle connection was closed: a next request gets no answer, and
    // certainly not from the removed service.
    let _ = idle.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "the connection to a removed service answered: {}",
        String::from_utf8_lossy(&rest)
    );

    // The request in flight got its whole answer, then the connection closed.
    let answer = read_response(&mut busy).expect("the request in flight is answered");
    assert!(answer.starts_with("http/1.1 504"), "{answer}");
    let _ = busy.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut rest = Vec::new();
    let _ = busy.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "closed after its request: {}",
        String::from_utf8_lossy(&rest)
    );
}

/// Sends GET /sleep in a thread on a keep-alive connection that has already
/// been served once (so the daemon has accepted it); returns once the request
/// is written, with the thread that reads the answer.
fn sleep_request(node: &Node, port: u16) -> std::thread::JoinHandle<String> {
    let mut s = TcpStream::connect((node.ip, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let first = read_response(&mut s).expect("a first request on the connection");
    assert!(first.starts_with("http/1.1 200"), "{first}");
    s.write_all(b"GET /sleep HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

#[test]
fn sigterm_lets_a_request_in_flight_finish_then_exits_0() {
    // The request (cut by a 3s wasm timeout) ends within the 10s grace.
    let mut node = Node::start_with("n1", &["--wasm-timeout", "3s"]);
    node.ok(&["init"]);
    node.create("faulty", "faulty", &["-p", "8081:80"]);
    let answer = sleep_request(&node, 8081);
    let status = node.sigterm();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let answer = answer.join().unwrap();
    assert_eq!(status_of(&answer), Some(504), "finished, not cut: {answer}");
    assert!(node.log().contains("shutting down"), "{}", node.log());
}

#[test]
fn sigterm_cuts_a_request_in_flight_at_the_grace_period_and_exits_0() {
    // The request would take a minute; the grace period is 1s.
    let mut node = Node::start_with("n1", &["--wasm-timeout", "120s", "--shutdown-grace", "1s"]);
    node.ok(&["init"]);
    node.create("faulty", "faulty", &["-p", "8081:80"]);
    let answer = sleep_request(&node, 8081);
    let status = node.sigterm(); // the harness allows 30s, far below the minute
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let answer = answer.join().unwrap();
    assert!(answer.is_empty(), "cut without an answer: {answer}");
    assert!(node.log().contains("grace period over"), "{}", node.log());
}
