//! Peak memory of a piece of work ([`MemoryProbe`]): on CUDA, the high-water mark of the bytes
//! allocated from the device's memory pool (candle allocates through cudarc's stream-ordered
//! `cuMemAllocAsync`; the mark is reset at the start, so it is the work's own peak including the
//! weights, comparable to PyTorch's `torch.cuda.max_memory_allocated`) and, as a cross-check,
//! the device's used memory (`total − free` of `cuMemGetInfo`, what `nvidia-smi` shows) sampled
//! every millisecond by a thread. On the CPU, the process's resident-set high-water mark
//! (`VmHWM` of `/proc/self/status`), reset at the start by writing `5` to
//! `/proc/self/clear_refs` (Linux ≥ 4.0).

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

    fn used_high(pool: sys::CUmemoryPool) -> Result<u64> {
        let mut value: u64 = 0;
        // SAFETY: USED_MEM_HIGH is a cuuint64_t attribute; `value` outlives the call.
        let r = unsafe {
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut value as *mut u64).cast(),
            )
        };
        check("cuMemPoolGetAttribute(USED_MEM_HIGH)", r)?;
        Ok(value)
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
}
