//! Peak memory of a piece of work ([`MemoryProbe`]): on CUDA, the high-water mark of the bytes
//! allocated from the device's memory pool (candle allocates through cudarc's stream-ordered
//! `cuMemAllocAsync`; the mark is reset at the start, so it is the work's own peak including the
//! weights, comparable to PyTorch's `torch.cuda.max_memory_allocated`) and, as a cross-check,
//! the device's used memory (`total − free` of `cuMemGetInfo`, what `nvidia-smi` shows) sampled
//! every millisecond by a thread. On the CPU, the process's resident-set high-water mark
//! (`VmHWM` of `/proc/self/status`), reset at the start by writing `5` to
//! `/proc/self/clear_refs` (Linux ≥ 4.0).
//!
//! Before large work, [`available_bytes`] says how much the device can still allocate and
//! [`ensure_fits`] turns an estimate that does not fit into an [`OutOfMemory`] error, so that
//! an oversized request fails with a message instead of being killed by the kernel's OOM killer
//! (or failing inside a CUDA kernel launch).

use candle_core::{Device, Result};

/// What a [`MemoryProbe`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeakMemory {
    /// The peak in bytes: on CUDA of the memory pool's allocated bytes, on the CPU of the
    /// resident set (`None` where it cannot be read).
    pub peak_bytes: Option<u64>,
    /// How [`PeakMemory::peak_bytes`] was measured.
    pub kind: MemoryKind,
    /// CUDA: the peak of the device's used memory (`total − free`), sampled every millisecond.
    pub sampled_device_peak_bytes: Option<u64>,
}

/// The meaning of [`PeakMemory::peak_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// High-water mark of the CUDA memory pool's allocated bytes, reset before the workload.
    CudaPoolHighWater,
    /// CUDA without a memory pool: only the sampled device memory is known.
    CudaSampledOnly,
    /// `VmHWM` reset before the workload (`/proc/self/clear_refs`).
    CpuResidentPeak,
    /// `VmHWM` of the whole process (the reset was refused): an upper bound.
    CpuResidentPeakSinceStart,
    /// No measurement on this platform.
    Unavailable,
}

impl MemoryKind {
    /// A short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::CudaPoolHighWater => "cuda-pool-high-water",
            Self::CudaSampledOnly => "cuda-sampled-only",
            Self::CpuResidentPeak => "cpu-vmhwm",
            Self::CpuResidentPeakSinceStart => "cpu-vmhwm-since-start",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Measures the peak memory of the work done between [`MemoryProbe::start`] and
/// [`MemoryProbe::finish`] (see the module doc).
pub struct MemoryProbe {
    inner: ProbeInner,
}

enum ProbeInner {
    Cpu {
        reset: bool,
    },
    #[cfg(feature = "cuda")]
    Cuda(cuda_probe::CudaProbe),
}

impl MemoryProbe {
    /// Resets the peak and starts measuring on `device`.
    pub fn start(device: &Device) -> Result<Self> {
        let inner = match device {
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => ProbeInner::Cuda(cuda_probe::CudaProbe::start(dev)?),
            _ => ProbeInner::Cpu {
                reset: std::fs::write("/proc/self/clear_refs", "5").is_ok(),
            },
        };
        Ok(Self { inner })
    }

    /// Stops measuring and returns the peak.
    pub fn finish(self) -> Result<PeakMemory> {
        match self.inner {
            ProbeInner::Cpu { reset } => {
                let peak = std::fs::read_to_string("/proc/self/status")
                    .ok()
                    .and_then(|s| vm_hwm_bytes(&s));
                let kind = match (peak, reset) {
                    (None, _) => MemoryKind::Unavailable,
                    (Some(_), true) => MemoryKind::CpuResidentPeak,
                    (Some(_), false) => MemoryKind::CpuResidentPeakSinceStart,
                };
                Ok(PeakMemory {
                    peak_bytes: peak,
                    kind,
                    sampled_device_peak_bytes: None,
                })
            }
            #[cfg(feature = "cuda")]
            ProbeInner::Cuda(probe) => probe.finish(),
        }
    }
}

/// `VmHWM` of a `/proc/self/status` text, in bytes.
fn vm_hwm_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// An estimated need that does not fit in what the device has available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} needs about {} of memory, but only {} is available on the {device}",
    gib(*needed_bytes),
    gib(*available_bytes)
)]
pub struct OutOfMemory {
    /// The work, in words (`painting a 4096×4096 canvas`).
    pub what: String,
    /// The estimated need in bytes.
    pub needed_bytes: u64,
    /// What the device had available in bytes.
    pub available_bytes: u64,
    /// The device (`CPU`, `GPU`).
    pub device: &'static str,
}

/// `bytes` in GiB with one decimal (`12.5 GiB`), or MiB under one GiB.
pub fn gib(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    let mib = bytes as f64 / MIB;
    if mib < 1024.0 {
        format!("{mib:.0} MiB")
    } else {
        format!("{:.1} GiB", mib / 1024.0)
    }
}

/// The bytes `device` can still allocate, when it can be told: on the CPU the kernel's
/// `MemAvailable`, lowered to the room left under the process's cgroup memory limit (v2
/// `memory.max − memory.current`, v1 `memory.limit_in_bytes − memory.usage_in_bytes`, the
/// inactive file cache counted as room); on CUDA the driver's free memory plus what candle's
/// memory pool holds unused.
pub fn available_bytes(device: &Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda_probe::available_bytes(dev),
        _ => {
            let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
            let available = mem_available_bytes(&meminfo)?;
            Some(match cgroup_room_bytes() {
                Some(room) => available.min(room),
                None => available,
            })
        }
    }
}

/// Fails with [`OutOfMemory`] when `needed_bytes` exceeds `available` (`None`: unknown, so
/// nothing is refused). `what` names the work for the message.
pub fn ensure_fits_in(
    what: impl FnOnce() -> String,
    needed_bytes: u64,
    available: Option<u64>,
    device: &'static str,
) -> std::result::Result<(), OutOfMemory> {
    match available {
        Some(available_bytes) if needed_bytes > available_bytes => Err(OutOfMemory {
            what: what(),
            needed_bytes,
            available_bytes,
            device,
        }),
        _ => Ok(()),
    }
}

/// [`ensure_fits_in`] against [`available_bytes`] of `device`.
pub fn ensure_fits(
    what: impl FnOnce() -> String,
    needed_bytes: u64,
    device: &Device,
) -> std::result::Result<(), OutOfMemory> {
    ensure_fits_in(
        what,
        needed_bytes,
        available_bytes(device),
        device_label(device),
    )
}

/// `device` for [`OutOfMemory`]'s message: `CPU` or `GPU`.
pub fn device_label(device: &Device) -> &'static str {
    if device.is_cpu() {
        "CPU"
    } else {
        "GPU"
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Room left under the cgroup memory limit of this process's namespace, if it has one. The
/// inactive file cache counted in the usage is reclaimable, so it counts as room (as `docker
/// stats` and the kubelet reckon a container's working set).
fn cgroup_room_bytes() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let (limit, usage, stat, cache_key) = match read("/sys/fs/cgroup/memory.max") {
        Some(limit) => (
            limit,
            read("/sys/fs/cgroup/memory.current")?,
            read("/sys/fs/cgroup/memory.stat"),
            "inactive_file",
        ),
        None => (
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes")?,
            read("/sys/fs/cgroup/memory/memory.usage_in_bytes")?,
            read("/sys/fs/cgroup/memory/memory.stat"),
            "total_inactive_file",
        ),
    };
    let cache = stat
        .as_deref()
        .and_then(|s| stat_value(s, cache_key))
        .unwrap_or(0);
    cgroup_room(&limit, &usage, cache)
}

/// The value of `key` in a cgroup `memory.stat` text (`key value` lines).
fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `limit − (usage − reclaimable)` of two cgroup files' texts; `None` for no limit (`max`, or
/// v1's page-rounded `i64::MAX`).
fn cgroup_room(limit: &str, usage: &str, reclaimable: u64) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok()?;
    let usage: u64 = usage.trim().parse().ok()?;
    (limit < 1 << 62).then(|| limit.saturating_sub(usage.saturating_sub(reclaimable)))
}

#[cfg(feature = "cuda")]
mod cuda_probe {
    //! The CUDA memory probe: memory-pool high-water mark and a sampling thread.

    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::Duration;

    use candle_core::cuda_backend::cudarc::driver::{sys, CudaContext};
    use candle_core::{CudaDevice, Result};

    use super::{MemoryKind, PeakMemory};

    pub(super) struct CudaProbe {
        pool: Option<sys::CUmemoryPool>,
        stop: Arc<AtomicBool>,
        peak_used: Arc<AtomicU64>,
        sampler: JoinHandle<()>,
    }

    fn check(what: &str, r: sys::CUresult) -> Result<()> {
        if r == sys::CUresult::CUDA_SUCCESS {
            Ok(())
        } else {
            candle_core::bail!("{what} failed: {r:?}")
        }
    }

    /// The pool `cuMemAllocAsync` allocates from, when candle allocates that way.
    fn current_pool(ctx: &CudaContext) -> Result<Option<sys::CUmemoryPool>> {
        if !ctx.has_async_alloc() {
            return Ok(None);
        }
        ctx.bind_to_thread().map_err(candle_core::Error::wrap)?;
        let mut pool = std::mem::MaybeUninit::uninit();
        // SAFETY: the device comes from a live context; the out-pointer is valid.
        let r = unsafe { sys::cuDeviceGetMemPool(pool.as_mut_ptr(), ctx.cu_device()) };
        check("cuDeviceGetMemPool", r)?;
        // SAFETY: written by the successful call above.
        Ok(Some(unsafe { pool.assume_init() }))
    }

    /// A cuuint64_t attribute of `pool` (the USED / RESERVED memory counters).
    fn pool_attribute(pool: sys::CUmemoryPool, attribute: sys::CUmemPool_attribute) -> Result<u64> {
        let mut value: u64 = 0;
        // SAFETY: the attributes read here are cuuint64_t ones; `value` outlives the call.
        let r =
            unsafe { sys::cuMemPoolGetAttribute(pool, attribute, (&mut value as *mut u64).cast()) };
        check("cuMemPoolGetAttribute", r)?;
        Ok(value)
    }

    fn used_high(pool: sys::CUmemoryPool) -> Result<u64> {
        pool_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        )
    }

    fn reset_used_high(pool: sys::CUmemoryPool) -> Result<()> {
        let mut zero: u64 = 0;
        // SAFETY: resetting USED_MEM_HIGH takes a cuuint64_t 0; `zero` outlives the call.
        let r = unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut zero as *mut u64).cast(),
            )
        };
        check("cuMemPoolSetAttribute(USED_MEM_HIGH)", r)
    }

    /// Free device memory plus the pool's reserved but unused bytes (candle frees into the pool).
    pub(super) fn available_bytes(dev: &CudaDevice) -> Option<u64> {
        let ctx = dev.cuda_stream().context().clone();
        let (free, _total) = ctx.mem_get_info().ok()?;
        let pooled_unused = match current_pool(&ctx).ok().flatten() {
            Some(pool) => {
                let reserved = pool_attribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
                )
                .ok()?;
                let used = pool_attribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
                )
                .ok()?;
                reserved.saturating_sub(used)
            }
            None => 0,
        };
        Some((free as u64).saturating_add(pooled_unused))
    }

    impl CudaProbe {
        pub(super) fn start(dev: &CudaDevice) -> Result<Self> {
            let stream = dev.cuda_stream();
            stream.synchronize().map_err(candle_core::Error::wrap)?;
            let ctx = stream.context().clone();
            let pool = current_pool(&ctx)?;
            if let Some(pool) = pool {
                reset_used_high(pool)?;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let peak_used = Arc::new(AtomicU64::new(0));
            let sampler = {
                let (stop, peak_used) = (Arc::clone(&stop), Arc::clone(&peak_used));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((free, total)) = ctx.mem_get_info() {
                            let used = total.saturating_sub(free) as u64;
                            peak_used.fetch_max(used, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            };
            Ok(Self {
                pool,
                stop,
                peak_used,
                sampler,
            })
        }

        pub(super) fn finish(self) -> Result<PeakMemory> {
            self.stop.store(true, Ordering::Relaxed);
            if self.sampler.join().is_err() {
                candle_core::bail!("the memory sampling thread panicked")
            }
            let sampled = self.peak_used.load(Ordering::Relaxed);
            let (peak_bytes, kind) = match self.pool {
                Some(pool) => (Some(used_high(pool)?), MemoryKind::CudaPoolHighWater),
                None => (None, MemoryKind::CudaSampledOnly),
            };
            Ok(PeakMemory {
                peak_bytes,
                kind,
                sampled_device_peak_bytes: (sampled > 0).then_some(sampled),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\teasel\nVmPeak:\t  200 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(vm_hwm_bytes(status), Some(1234 * 1024));
        assert_eq!(vm_hwm_bytes("Name: x\n"), None);
    }

    #[test]
    fn mem_available_is_read_in_bytes() {
        let meminfo =
            "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   23695384 kB\n";
        assert_eq!(mem_available_bytes(meminfo), Some(23_695_384 * 1024));
        assert_eq!(mem_available_bytes("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn cgroup_room_is_limit_minus_usage_and_no_limit_is_none() {
        assert_eq!(
            cgroup_room("8589934592\n", "4138700800\n", 0),
            Some(4_451_233_792)
        );
        assert_eq!(cgroup_room("1000", "2000", 0), Some(0));
        // Reclaimable file cache in the usage is room.
        assert_eq!(cgroup_room("1000", "900", 300), Some(400));
        assert_eq!(cgroup_room("1000", "900", 5000), Some(1000));
        // v2 without a limit, and v1's page-rounded i64::MAX.
        assert_eq!(cgroup_room("max\n", "4138700800\n", 0), None);
        assert_eq!(
            cgroup_room("9223372036854771712\n", "4138700800\n", 0),
            None
        );
        let stat = "anon 1000\nfile 5000\nactive_file 100\ninactive_file 4900\n";
        assert_eq!(stat_value(stat, "inactive_file"), Some(4900));
        assert_eq!(stat_value(stat, "file"), Some(5000));
        assert_eq!(stat_value(stat, "total_inactive_file"), None);
    }

    #[test]
    fn needs_over_the_available_memory_are_refused_with_both_figures() {
        let what = || "painting a 4096×4096 canvas".to_string();
        let err = ensure_fits_in(what, 20 << 30, Some(12 << 30), "CPU").unwrap_err();
        assert_eq!(
            err.to_string(),
            "painting a 4096×4096 canvas needs about 20.0 GiB of memory, but only 12.0 GiB is \
             available on the CPU"
        );
        assert_eq!(
            ensure_fits_in(what, 12 << 30, Some(12 << 30), "CPU"),
            Ok(())
        );
        // Unknown availability refuses nothing.
        assert_eq!(ensure_fits_in(what, u64::MAX, None, "GPU"), Ok(()));
        assert_eq!(gib(300 << 20), "300 MiB");
    }

    #[test]
    fn this_machine_reports_available_memory() {
        // Linux CI and development machines have /proc/meminfo.
        let available = available_bytes(&Device::Cpu).expect("MemAvailable on Linux");
        assert!(available > 64 << 20, "{available} bytes available");
    }
}
