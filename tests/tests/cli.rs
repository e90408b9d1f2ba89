//! What a user meets at the command line: IDs that always mean one service,
//! and output piped into a reader that stops early.

use std::process::{Command, Stdio};

use swarmlet_e2e::{swarmlet_bin, Node};

#[test]
fn an_id_from_service_ls_never_names_another_service() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    node.create("web", "hello", &["-p", "8080:80"]);
    let id = node.ok(&["service", "ls", "-q"]).trim().to_string();
    assert_eq!(id.len(), 25, "{id}");
    let short = &id[..12];

    // A service named like web's short ID (as `service ls` prints it) is refused...
    let hello = swarmlet_e2e::guest("hello");
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        short,
        hello.to_str().unwrap(),
    ]);
    assert!(err.contains("ID prefix"), "{err}");
    // ...so removing by that ID removes web and nothing else.
    node.create("api", "hello", &["-p", "8081:80"]);
    node.ok(&["service", "rm", short]);
    let ls = node.ok(&["service", "ls"]);
    assert!(!ls.contains(" web "), "{ls}");
    assert!(ls.contains(" api "), "{ls}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    node.create("web", "hello", &["--replicas", "50", "-p", "8080:80"]);
    // `swarmlet service ps web | head -0`: the reader is gone before the
    // CLI writes.
    let mut child = Command::new(swarmlet_bin())
        .arg("-H")
        .arg(format!("unix://{}", node.socket().display()))
        .args(["service", "ps", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run swarmlet");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for swarmlet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "nothing on stderr: {err}");
}
