//! Task runtimes. `wasm` serves `wasi:http/proxy` components in-process;
//! `container` (OCI through containerd's shim) comes later beside it.

pub mod wasm;
