//! The node's one wasmtime `Engine`: its configuration (isolation, the
//! instance allocator) and the epoch thread that interrupts guests.

use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::{engine_err, WasmError, MAX_MEMORY};

/// How often the epoch advances: guests yield to the scheduler this often,
/// so a spinning guest neither blocks a worker thread nor outlives its timeout.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Builds the engine and starts its epoch thread.
pub(super) fn build() -> Result<Engine, WasmError> {
    let mut pool = PoolingAllocationConfig::default();
    pool.pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(4 << 20)
        .table_keep_resident(1 << 20)
        .async_stack_keep_resident(1 << 20)
        .max_memory_size(MAX_MEMORY);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        // See the module doc: no mprotect per request.
        .signals_based_traps(false)
        .memory_guard_size(0)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).map_err(engine_err)?;

    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map_err(|e| WasmError::Engine(format!("starting the epoch thread: {e}")))?;
    Ok(engine)
}
