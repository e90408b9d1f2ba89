//! The transport end to end in one process: the cluster port's TLS listener
//! (`listen::serve_tls`) with real certificates, and the pooled client.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;

use super::client::PoolOptions;
use super::{ClusterPort, Peer, Pool, Target, TransportError};
use crate::listen::{Budget, Limits};
use crate::pki::{self, Ca, CertRole, NodeCerts};

const MANAGER: &str = "a000000000000000000000001";
const WORKER: &str = "b000000000000000000000002";

fn node_certs(ca: &swarmlet_proto::cluster::CaMaterial, id: &str, role: CertRole) -> NodeCerts {
    let key = pki::new_csr(id).unwrap();
    let cert_pem = Ca::load(ca)
        .unwrap()
        .sign_node(&key.csr_pem, id, role, "c1")
        .unwrap();
    NodeCerts {
        ca_pem: ca.cert_pem.clone(),
        cert_pem,
        key_pem: key.key_pem,
    }
}

/// A cluster port on `ip:0` that answers each request with who called,
/// after the route check. Returns its address and the connection count.
async fn start_port(
    ip: &str,
    certs: &NodeCerts,
    limits: impl FnOnce(&mut Limits),
    handshake_timeout: Duration,
) -> (String, Arc<ClusterPort>, Arc<Budget>, watch::Sender<bool>) {
    let port = ClusterPort::new();
    port.install(certs).unwrap();
    let budget = Budget::new(1024);
    let mut l = Limits::new(&budget, None);
    limits(&mut l);
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, closing) = watch::channel(false);
    let p1 = port.clone();
    let p2 = port.clone();
    tokio::spawn(crate::listen::serve_tls(
        "test cluster port".into(),
        listener,
        l,
        budget.clone(),
        port.tls_switch(),
        handshake_timeout,
        move |c: Option<&rustls::pki_types::CertificateDer<'_>>| p1.identify(c),
        |_req| async { hyper::Response::new(Full::new(Bytes::from_static(b"plain"))) },
        move |req: hyper::Request<hyper::body::Incoming>| {
            let port = p2.clone();
            async move {
                let peer = req.extensions().get::<Peer>().cloned();
                let body = match peer {
                    Some(p) => match port.check(&p, req.method(), req.uri().path()) {
                        Ok(()) => serde_json::to_vec(&format!("{p:?}")).unwrap(),
                        Err(f) => {
                            let mut r = hyper::Response::new(Full::new(Bytes::from(
                                serde_json::to_vec(&swarmlet_proto::api::ErrorBody {
                                    message: f.0,
                                })
                                .unwrap(),
                            )));
                            *r.status_mut() = http::StatusCode::FORBIDDEN;
                            return r;
                        }
                    },
                    None => b"\"no peer\"".to_vec(),
                };
                hyper::Response::new(Full::new(Bytes::from(body)))
            }
        },
        closing,
    ));
    (addr, port, budget, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_calls_over_mtls_h2_as_the_node_and_reconnects_after_the_server_closes() {
    let ca = pki::create_ca("c1").unwrap();
    let manager = node_certs(&ca, MANAGER, CertRole::Manager);
    let worker = node_certs(&ca, WORKER, CertRole::Worker);
    // The server closes idle connections quickly (GOAWAY on h2).
    let (addr, _port, budget, _close) = start_port(
        "127.12.0.1",
        &manager,
        |l| l.idle_timeout = Duration::from_millis(200),
        Duration::from_secs(5),
    )
    .await;
    let pool = Pool::for_node(&worker, PoolOptions::default()).unwrap();
    let who: String = pool
        .get_json(&addr, &Target::Manager, "/v1/blobs/sha256:00")
        .await
        .expect("a worker may fetch blobs");
    assert_eq!(
        who,
        format!("Node {{ node_id: \"{WORKER}\", role: Worker }}")
    );
    // A manager-only route: 403 with the reason.
    match pool
        .get_json::<String>(&addr, &Target::Manager, "/v1/raft/messages")
        .await
    {
        Err(TransportError::Status {
            status: 403,
            message,
        }) => {
            assert!(message.contains("managers only"), "{message}")
        }
        other => panic!("a worker reached a manager-only route: {other:?}"),
    }
    // Many requests share one multiplexed connection.
    let calls = (0..20).map(|_| pool.get_json::<String>(&addr, &Target::Manager, "/v1/blobs/x"));
    for r in futures::future::join_all(calls).await {
        r.expect("concurrent request");
    }
    assert_eq!(budget.open(), 1, "one connection for all requests");
    // The server idles the connection out; the next request reconnects.
    let mut closed = false;
    for _ in 0..500 {
        if budget.open() == 0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the idle connection was never closed by the server");
    let again: String = pool
        .get_json(&addr, &Target::Manager, "/v1/blobs/x")
        .await
        .expect("the pool reconnects");
    assert!(again.contains(WORKER));
    // The worker's port does not pass as a manager's.
    let (waddr, _, _, _c2) =
        start_port("127.12.0.2", &worker, |_| {}, Duration::from_secs(5)).await;
    let mpool = Pool::for_node(&manager, PoolOptions::default()).unwrap();
    let e = mpool
        .get_json::<String>(&waddr, &Target::Manager, "/v1/blobs/x")
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::Handshake { .. }), "{e}");
    mpool
        .get_json::<String>(&waddr, &Target::Node(WORKER.into()), "/v1/blobs/x")
        .await
        .expect("the worker answers as itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_ca_cert_fails_the_handshake_and_a_silent_client_is_cut() {
    let ca = pki::create_ca("c1").unwrap();
    let manager = node_certs(&ca, MANAGER, CertRole::Manager);
    let (addr, port, budget, _close) =
        start_port("127.12.0.3", &manager, |_| {}, Duration::from_millis(300)).await;
    // A certificate from another CA (same names) is refused by TLS.
    let other = pki::create_ca("c1").unwrap();
    let mut impostor = node_certs(&other, MANAGER, CertRole::Manager);
    impostor.ca_pem = ca.cert_pem.clone(); // it trusts the real server
    let pool = Pool::for_node(&impostor, PoolOptions::default()).unwrap();
    let e = pool
        .get_json::<String>(&addr, &Target::Manager, "/v1/services")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::Handshake { .. } | TransportError::Request { .. }
        ),
        "{e}"
    );
    // A removed node is refused per request.
    port.set_revoked([MANAGER.to_string()].into());
    let pool = Pool::for_node(&manager, PoolOptions::default()).unwrap();
    match pool
        .get_json::<String>(&addr, &Target::Manager, "/v1/services")
        .await
    {
        Err(TransportError::Status {
            status: 403,
            message,
        }) => {
            assert!(message.contains("removed"), "{message}")
        }
        other => panic!("a removed node got through: {other:?}"),
    }
    // A client that connects and never starts TLS is closed after the
    // handshake timeout.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf))
        .await
        .expect("the silent connection was never closed");
    assert_eq!(
        n.unwrap_or(0),
        0,
        "no bytes for a client that never handshook"
    );
    let _ = budget;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_to_an_unconnected_peer_makes_one_connection() {
    let ca = pki::create_ca("c1").unwrap();
    let manager = node_certs(&ca, MANAGER, CertRole::Manager);
    let worker = node_certs(&ca, WORKER, CertRole::Worker);
    let (addr, _port, budget, _close) =
        start_port("127.12.0.4", &manager, |_| {}, Duration::from_secs(5)).await;
    // 32 requests at once find no connection: they share one connect. The
    // handles are kept, so every connection made would still be open.
    let pool = Pool::for_node(&worker, PoolOptions::default()).unwrap();
    let conns =
        futures::future::join_all((0..32).map(|_| pool.connection(&addr, &Target::Manager))).await;
    let held: Vec<_> = conns.into_iter().map(|c| c.expect("connected")).collect();
    assert_eq!(budget.open(), 1, "one TLS connection for the whole burst");
    // And it is the pooled one: requests now use it.
    let who: String = pool
        .get_json(&addr, &Target::Manager, "/v1/blobs/x")
        .await
        .expect("a request on the pooled connection");
    assert!(who.contains(WORKER), "{who}");
    assert_eq!(budget.open(), 1);
    drop(held);

    // A burst to a port nobody listens on: every request gets the one
    // connect's error, and the failure is not pooled (the next request tries
    // again and fails the same way, not with a stale answer).
    let closed = {
        let l = tokio::net::TcpListener::bind("127.12.0.4:0").await.unwrap();
        l.local_addr().unwrap().to_string()
    };
    let errors =
        futures::future::join_all((0..16).map(|_| pool.connection(&closed, &Target::Manager)))
            .await;
    for e in errors {
        match e {
            Err(TransportError::Connect { addr, .. }) => assert_eq!(addr, closed),
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("connected to a closed port"),
        }
    }
    assert!(matches!(
        pool.connection(&closed, &Target::Manager).await,
        Err(TransportError::Connect { .. })
    ));
}
