//! Task runtimes. `wasm` serves `wasi:http/proxy` components in-process;
//! `container` runs OCI containers through containerd's shim beside it.

pub mod container;
pub mod wasm;
