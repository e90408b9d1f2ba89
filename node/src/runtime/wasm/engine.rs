//! The node's wasmtime engines: how they isolate guests, how the
//! instance allocator is sized for the machine's address space, the
//! WASIp3 engine beside the node's, and the epoch threads that interrupt guests.
//!
//! `EngineSettings` is the single source of truth for how the engine was
//! built: `build` turns it into a wasmtime `Config`, the compile child
//! (`swarmlet compile-component`) gets the same settings so its artifacts
//! load in the daemon, and `swarmlet info` reports it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::{engine_err, WasmError, MAX_MEMORY};

/// How often the epoch advances: guests yield to the scheduler this often,
/// so a spinning guest neither blocks a worker thread nor outlives its timeout.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Instances the pool holds when the address space allows it (wasmtime's
/// default pool size).
pub const POOL_SLOTS: u32 = 1000;
/// Fewer slots than this and the on-demand allocator serves better.
const MIN_POOL_SLOTS: u32 = 32;
/// wasmtime's default guard region after (and before) each linear memory.
const GUARD: u64 = 32 << 20;
/// A reservation that covers a 32-bit memory's whole index space: wasmtime
/// then elides bounds checks (the guard pages catch every stray access).
const FULL_RESERVATION: u64 = 1 << 32;
/// Address space a slot costs besides its memory: an async stack (2 MiB +
/// guard), tables, instance metadata. An estimate with room to spare.
const SLOT_OVERHEAD: u64 = 8 << 20;

/// How guests are kept inside their sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Isolation {
    /// wasmtime's default: guard pages around every linear memory,
    /// signals-based traps, Cranelift's Spectre mitigations.
    #[default]
    GuardPages,
    /// For trusted guests only: explicit bounds checks, no guard pages, no
    /// signal handlers, and (as wasmtime requires then) no Spectre
    /// mitigations on heap and table accesses. Saves the `mprotect` (and its
    /// TLB shootdown) at every instantiation and first `memory.grow`.
    NoGuardPages,
}

impl Isolation {
    pub fn name(self) -> &'static str {
        match self {
            Isolation::GuardPages => "guard-pages",
            Isolation::NoGuardPages => "no-guard-pages",
        }
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "guard-pages" => Ok(Isolation::GuardPages),
            "no-guard-pages" => Ok(Isolation::NoGuardPages),
            _ => Err(format!(
                "unknown wasm isolation {s:?}: use guard-pages (the default) or no-guard-pages (trusted guests only: no guard pages, no Spectre mitigations)"
            )),
        }
    }
}

/// Where instances' memories, tables and stacks come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Allocator {
    /// Reserved once at start-up: `slots` instances, each with a linear
    /// memory slot of the settings' reservation plus guard.
    Pooling { slots: u32 },
    /// mmap per instance (when the address space cannot hold a pool).
    OnDemand,
}

/// How the engine is (to be) built. Everything that affects generated code
/// is here, so a compile child given the same settings makes artifacts the
/// daemon can load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSettings {
    pub isolation: Isolation,
    pub signals_based_traps: bool,
    pub spectre_mitigations: bool,
    /// Guard region after (and before) each linear memory; 0 = none.
    pub memory_guard: u64,
    /// Address space reserved for each linear memory.
    pub memory_reservation: u64,
    pub allocator: Allocator,
    /// What the machine allows a process, when known (see `AddressSpace`).
    pub address_space: Option<u64>,
    /// The component model's concurrency (async functions, streams,
    /// futures: WASIp3). Only the WASIp3 engine has it: with it every host
    /// call of every component does task bookkeeping, which costs a WASIp2
    /// request about a seventh of its throughput.
    #[serde(default)]
    pub concurrency: bool,
}

impl EngineSettings {
    /// The settings for `isolation` with a pool of `slots`, the memory
    /// reservation covering the whole 32-bit index space when `full`.
    fn new(isolation: Isolation, allocator: Allocator, full: bool, space: Option<u64>) -> Self {
        let guarded = isolation == Isolation::GuardPages;
        EngineSettings {
            isolation,
            signals_based_traps: guarded,
            spectre_mitigations: guarded,
            memory_guard: if guarded { GUARD } else { 0 },
            memory_reservation: if guarded && full {
                FULL_RESERVATION
            } else {
                MAX_MEMORY as u64
            },
            allocator,
            address_space: space,
            concurrency: false,
        }
    }

    /// The settings of the WASIp3 engine beside this one: the same
    /// isolation and code generation plus the component model's
    /// concurrency, and the on-demand allocator (its instances serve many
    /// requests each, so they are seldom made; the address space stays
    /// with this engine's pool).
    pub fn concurrent(&self) -> EngineSettings {
        EngineSettings {
            allocator: Allocator::OnDemand,
            concurrency: true,
            ..self.clone()
        }
    }

    /// Address space one pool slot costs.
    fn slot_bytes(&self) -> u64 {
        self.memory_reservation + self.memory_guard + SLOT_OVERHEAD
    }

    /// Address space the pool reserves at start-up (0 for on-demand).
    pub fn pool_reservation(&self) -> u64 {
        match self.allocator {
            Allocator::Pooling { slots } => u64::from(slots) * self.slot_bytes(),
            Allocator::OnDemand => 0,
        }
    }

    /// The wasmtime configuration these settings describe.
    pub fn config(&self) -> Config {
        let mut config = Config::new();
        config
            // WASIp3 components: async functions, streams and futures, on
            // the WASIp3 engine only. Part of the compatibility hash, so an
            // artifact one engine made is refused by the other.
            .wasm_component_model_async(self.concurrency)
            .concurrency_support(self.concurrency)
            .epoch_interruption(true)
            .signals_based_traps(self.signals_based_traps)
            .memory_guard_size(self.memory_guard)
            .memory_reservation(self.memory_reservation)
            // Growing past the reservation would move the memory; it never
            // needs to (the reservation is at least the largest memory).
            .memory_reservation_for_growth(0);
        if !self.spectre_mitigations {
            // SAFETY (of the sandbox): only reached for `NoGuardPages`, which
            // wasmtime requires to run without these mitigations.
            unsafe {
                config.cranelift_flag_set("enable_heap_access_spectre_mitigation", "false");
                config.cranelift_flag_set("enable_table_access_spectre_mitigation", "false");
            }
        }
        if let Allocator::Pooling { slots } = self.allocator {
            let mut pool = PoolingAllocationConfig::default();
            // Memories, tables and stacks kept resident with PAGEMAP_SCAN
            // resets: 2.8× the default's requests/s here (../shared/GUESTS.md).
            pool.pagemap_scan(Enabled::Auto)
                .linear_memory_keep_resident(4 << 20)
                .table_keep_resident(1 << 20)
                .async_stack_keep_resident(1 << 20)
                .max_memory_size(MAX_MEMORY)
                .total_memories(slots)
                .total_tables(slots)
                .total_stacks(slots)
                .total_core_instances(slots)
                .total_component_instances(slots);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        config
    }

    /// One line for logs and `swarmlet info`.
    pub fn describe_allocator(&self) -> String {
        match self.allocator {
            Allocator::Pooling { slots } => format!(
                "pooling: {slots} instances, {} reserved ({} memory + {} guard each)",
                gib(self.pool_reservation()),
                gib(self.memory_reservation),
                gib(self.memory_guard)
            ),
            Allocator::OnDemand => format!(
                "on-demand: mmap per instance ({} memory + {} guard each)",
                gib(self.memory_reservation),
                gib(self.memory_guard)
            ),
        }
    }
}

/// A byte count as people read address spaces: `4 GiB`, `160 MiB`, `1.5 TiB`.
pub fn gib(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            let v = bytes as f64 / size as f64;
            return if v.fract() < 0.05 {
                format!("{v:.0} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{bytes} B")
}

/// The virtual address space this process may use.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddressSpace {
    /// `ulimit -v` (RLIMIT_AS), if set.
    pub rlimit: Option<u64>,
    /// The user half of the CPU's/kernel's virtual addresses.
    pub user_va: Option<u64>,
}

impl AddressSpace {
    /// Reads RLIMIT_AS, /proc/cpuinfo's "address sizes" (x86) and the top of
    /// this process's stack (on arm64 the kernel's VA size — 39 bits on a
    /// Raspberry Pi — shows only there).
    /// `SWARMLET_TEST_UNKNOWN_ADDRESS_SPACE=1` (for tests) pretends nothing
    /// is known, so the pool's full reservation is tried and must fail over.
    pub fn of_this_process() -> Self {
        if std::env::var_os("SWARMLET_TEST_UNKNOWN_ADDRESS_SPACE").is_some() {
            return AddressSpace::default();
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        let rlimit = (unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0
            && lim.rlim_cur != libc::RLIM_INFINITY)
            .then_some(lim.rlim_cur);
        let cpu_bits = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| va_bits_from_cpuinfo(&s));
        let stack_bits = std::fs::read_to_string("/proc/self/maps")
            .ok()
            .and_then(|s| va_bits_from_maps(&s));
        let user_va = match (cpu_bits, stack_bits) {
            // x86_64: user space is the lower half of the canonical addresses.
            (Some(c), Some(s)) => Some(1u64 << (c - 1).min(s)),
            (Some(c), None) => Some(1u64 << (c - 1)),
            (None, Some(s)) => Some(1u64 << s),
            (None, None) => None,
        };
        AddressSpace { rlimit, user_va }
    }

    /// The smaller of the two limits, if either is known.
    pub fn limit(&self) -> Option<u64> {
        match (self.rlimit, self.user_va) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// "address sizes : 46 bits physical, 48 bits virtual" → 48.
fn va_bits_from_cpuinfo(cpuinfo: &str) -> Option<u32> {
    let line = cpuinfo.lines().find(|l| l.starts_with("address sizes"))?;
    let virt = line.split(',').find(|p| p.contains("virtual"))?;
    virt.split_whitespace()
        .next()?
        .parse()
        .ok()
        .filter(|b| (32..=64).contains(b))
}

/// The bits needed to address the end of `[stack]`, which the kernel puts
/// at the top of the user address space.
fn va_bits_from_maps(maps: &str) -> Option<u32> {
    let line = maps.lines().find(|l| l.ends_with("[stack]"))?;
    let end = line.split(['-', ' ']).nth(1)?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let bits = 64 - end.saturating_sub(1).leading_zeros();
    (32..=64).contains(&bits).then_some(bits)
}

/// The settings to try, best first: the largest pool the address space
/// holds (leaving half of it to the rest of the process), then smaller
/// pools, then on-demand allocation, which always comes last.
pub fn candidates(isolation: Isolation, space: AddressSpace) -> Vec<EngineSettings> {
    let limit = space.limit();
    let budget = limit.map(|l| l / 2).unwrap_or(u64::MAX);
    let mut out = Vec::new();
    let full = EngineSettings::new(
        isolation,
        Allocator::Pooling { slots: POOL_SLOTS },
        true,
        limit,
    );
    if full.pool_reservation() <= budget {
        out.push(full);
    }
    let compact = EngineSettings::new(isolation, Allocator::Pooling { slots: 0 }, false, limit);
    let fit = u32::try_from(budget / compact.slot_bytes()).unwrap_or(u32::MAX);
    let mut slots = fit.min(POOL_SLOTS);
    while slots >= MIN_POOL_SLOTS {
        let s = EngineSettings {
            allocator: Allocator::Pooling { slots },
            ..compact.clone()
        };
        if !out.contains(&s) {
            out.push(s);
        }
        slots /= 2;
    }
    out.push(EngineSettings::new(
        isolation,
        Allocator::OnDemand,
        false,
        limit,
    ));
    out
}

/// Builds the engine from the first candidate whose reservation succeeds
/// (logging which allocator runs) and starts its epoch thread.
pub(super) fn build(isolation: Isolation) -> Result<(Engine, EngineSettings), WasmError> {
    let space = AddressSpace::of_this_process();
    let mut last_err = None;
    let mut built = None;
    for settings in candidates(isolation, space) {
        match Engine::new(&settings.config()) {
            Ok(engine) => {
                built = Some((engine, settings));
                break;
            }
            Err(e) => {
                tracing::warn!(
                    "wasm engine: {} failed ({e:#}); trying a smaller one",
                    settings.describe_allocator()
                );
                last_err = Some(e);
            }
        }
    }
    let Some((engine, settings)) = built else {
        return Err(engine_err(match last_err {
            Some(e) => format!("{e:#}"),
            None => "no engine configuration to try".into(),
        }));
    };
    tracing::info!(
        isolation = settings.isolation.name(),
        address_space = %settings.address_space.map(gib).unwrap_or_else(|| "unknown".into()),
        "wasm engine: {}",
        settings.describe_allocator()
    );
    start_epoch_thread(&engine)?;
    Ok((engine, settings))
}

/// The WASIp3 engine beside the node's engine (`EngineSettings::concurrent`),
/// with its own epoch thread.
pub(super) fn build_concurrent(
    main: &EngineSettings,
) -> Result<(Engine, EngineSettings), WasmError> {
    let settings = main.concurrent();
    let engine = Engine::new(&settings.config()).map_err(engine_err)?;
    start_epoch_thread(&engine)?;
    Ok((engine, settings))
}

/// An engine that only compiles (the compile child): same code-generation
/// settings, no instance pool.
pub(super) fn compiler(settings: &EngineSettings) -> Result<Engine, WasmError> {
    let settings = EngineSettings {
        allocator: Allocator::OnDemand,
        ..settings.clone()
    };
    Engine::new(&settings.config()).map_err(engine_err)
}

fn start_epoch_thread(engine: &Engine) -> Result<(), WasmError> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{Hash, Hasher};

    fn code_hash(config: &Config) -> u64 {
        let engine = Engine::new(config).unwrap();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        h.finish()
    }

    fn on_demand(s: &EngineSettings) -> EngineSettings {
        EngineSettings {
            allocator: Allocator::OnDemand,
            ..s.clone()
        }
    }

    #[test]
    fn the_default_has_guard_pages_signals_based_traps_and_spectre_mitigations() {
        let unlimited = AddressSpace {
            rlimit: None,
            user_va: Some(1 << 47),
        };
        let s = &candidates(Isolation::default(), unlimited)[0];
        assert_eq!(s.isolation, Isolation::GuardPages);
        assert!(s.signals_based_traps && s.spectre_mitigations);
        assert_eq!(s.memory_guard, 32 << 20);
        assert_eq!(s.memory_reservation, 4 << 30, "bounds checks elided");
        assert_eq!(s.allocator, Allocator::Pooling { slots: POOL_SLOTS });

        // What wasmtime builds from it, not just what the struct says.
        let config = on_demand(s).config();
        let engine = Engine::new(&config).unwrap();
        assert!(engine.get_signals_based_traps());
        assert_eq!(engine.get_memory_guard_size(), 32 << 20);
        assert!(engine.get_guard_before_linear_memory());
        assert_eq!(engine.get_memory_reservation(), 4 << 30);
        // Cranelift's resolved flags are part of the compatibility hash: the
        // default engine generates the same code as one with the Spectre
        // mitigations set explicitly on, and other code than one without.
        let mut on = on_demand(s).config();
        let mut off = on_demand(s).config();
        // SAFETY: test engines only compile, nothing runs.
        unsafe {
            on.cranelift_flag_set("enable_heap_access_spectre_mitigation", "true");
            on.cranelift_flag_set("enable_table_access_spectre_mitigation", "true");
            off.cranelift_flag_set("enable_heap_access_spectre_mitigation", "false");
            off.cranelift_flag_set("enable_table_access_spectre_mitigation", "false");
        }
        assert_eq!(code_hash(&config), code_hash(&on));
        assert_ne!(code_hash(&config), code_hash(&off));

        // The default engine runs without the component model's
        // concurrency (its per-call task bookkeeping); the WASIp3 engine
        // beside it has it, with the same isolation, and their artifacts
        // do not match (each refuses the other's).
        assert!(!s.concurrency && !engine.get_concurrency_support());
        let p3 = s.concurrent();
        assert!(p3.concurrency && p3.allocator == Allocator::OnDemand);
        assert_eq!(
            (p3.isolation, p3.memory_guard, p3.memory_reservation),
            (s.isolation, s.memory_guard, s.memory_reservation)
        );
        let p3_engine = Engine::new(&p3.config()).unwrap();
        assert!(p3_engine.get_concurrency_support());
        assert_ne!(code_hash(&config), code_hash(&p3.config()));
    }

    #[test]
    fn no_guard_pages_gives_up_guards_signals_and_spectre_mitigations() {
        let s = &candidates(Isolation::NoGuardPages, AddressSpace::default())[0];
        assert!(!s.signals_based_traps && !s.spectre_mitigations);
        assert_eq!(s.memory_guard, 0);
        let engine = Engine::new(&on_demand(s).config())
            .expect("wasmtime accepts the no-guard-pages settings");
        assert!(!engine.get_signals_based_traps());
        assert_eq!(engine.get_memory_guard_size(), 0);
    }

    #[test]
    fn the_pool_fits_the_address_space_or_gives_way_to_on_demand() {
        let gib = 1u64 << 30;
        let pi = AddressSpace {
            rlimit: None,
            user_va: Some(512 * gib),
        };
        let c = candidates(Isolation::GuardPages, pi);
        assert_eq!(c[0].allocator, Allocator::Pooling { slots: POOL_SLOTS });
        assert_eq!(c[0].memory_reservation, MAX_MEMORY as u64);
        assert!(c[0].pool_reservation() <= 256 * gib);
        assert_eq!(c.last().unwrap().allocator, Allocator::OnDemand);

        let small = AddressSpace {
            rlimit: Some(16 * gib),
            user_va: Some(1 << 47),
        };
        let c = candidates(Isolation::GuardPages, small);
        match c[0].allocator {
            Allocator::Pooling { slots } => assert!((MIN_POOL_SLOTS..POOL_SLOTS).contains(&slots)),
            Allocator::OnDemand => panic!("16 GiB holds a small pool"),
        }
        assert!(c[0].pool_reservation() <= 8 * gib);

        let tiny = AddressSpace {
            rlimit: Some(2 * gib),
            user_va: None,
        };
        let c = candidates(Isolation::GuardPages, tiny);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].allocator, Allocator::OnDemand);
    }

    #[test]
    fn address_sizes_are_read_from_cpuinfo_and_the_stack() {
        let cpuinfo = "processor\t: 0\naddress sizes\t: 46 bits physical, 48 bits virtual\n";
        assert_eq!(va_bits_from_cpuinfo(cpuinfo), Some(48));
        assert_eq!(
            va_bits_from_cpuinfo("processor : 0\nFeatures : fp asimd\n"),
            None
        );
        let maps = "7f12-7f13 r-xp 0 0:0 0 /lib/x.so\n7fffd1c00000-7fffd1c21000 rw-p 00000000 00:00 0                          [stack]";
        assert_eq!(va_bits_from_maps(maps), Some(47));
        let pi = "7fe4a1e000-7fe4a3f000 rw-p 00000000 00:00 0    [stack]";
        assert_eq!(va_bits_from_maps(pi), Some(39));
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(gib(4 << 30), "4 GiB");
        assert_eq!(gib(32 << 20), "32 MiB");
        assert_eq!(gib(1000 * ((4 << 30) + (40 << 20))), "3.9 TiB");
        assert_eq!(gib(0), "0 B");
    }
}
