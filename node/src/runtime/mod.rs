//! Task runtimes. `wasm` serves `wasi:http/proxy` components in-process;
//! `container` runs OCI containers through containerd's shim beside it
//! (`container::ContainerTasks` is its `Runtime`).
//!
//! The agent drives every runtime through one interface (`task.rs`,
//! modelled on swarmkit's `exec.Controller`): per task a `Controller` that
//! prepares (fetch, pull, compile), starts, waits for the task to exit,
//! stops it with a grace period and removes what it left. `supervisor.rs`
//! runs one controller per task in its own tokio task and sends what
//! happens back to the agent as `Event`s, so a slow start (an image pull, a
//! first compile) never holds up another task.

pub mod container;
pub mod supervisor;
pub mod task;
pub mod wasm;

pub use supervisor::{Event, Supervisor};
pub use task::{Controller, Exit, Runtime, RuntimeError, Runtimes, Serving, Unavailable};
