//! A tiny TCP server and client for the netns tests, so they need no
//! netcat or python on the machine: std only.
//!
//! `netns_probe serve IP:PORT` answers every connection with `pong IP:PORT`;
//! `netns_probe connect IP:PORT MILLIS` exits 0 if it got that answer within
//! MILLIS (connect and read), 1 otherwise, saying why on stderr.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: netns_probe serve IP:PORT | connect IP:PORT MILLIS";
    let Some(addr) = args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    match args[0].as_str() {
        "serve" => serve(addr),
        "connect" => {
            let millis = args.get(2).and_then(|m| m.parse().ok()).unwrap_or(1000);
            connect(addr, Duration::from_millis(millis))
        }
        _ => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
    }
}

fn serve(addr: SocketAddr) -> ExitCode {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("binding {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening {addr}");
    for stream in listener.incoming() {
        match stream {
            Ok(mut s) => {
                let _ = writeln!(s, "pong {addr}");
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    ExitCode::SUCCESS
}

fn connect(addr: SocketAddr, wait: Duration) -> ExitCode {
    let mut s = match TcpStream::connect_timeout(&addr, wait) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("connecting to {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = s.set_read_timeout(Some(wait));
    let mut reply = String::new();
    if let Err(e) = s.read_to_string(&mut reply) {
        eprintln!("reading from {addr}: {e}");
        return ExitCode::FAILURE;
    }
    if reply.trim() == format!("pong {addr}") {
        ExitCode::SUCCESS
    } else {
        eprintln!("unexpected answer from {addr}: {reply:?}");
        ExitCode::FAILURE
    }
}
