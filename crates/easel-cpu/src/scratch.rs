//! Recycled f32 buffers: a network pass takes and gives back its activations here; and
//! [`keep_freed_memory`], the allocator setting that recycles the buffers candle frees.

/// Asks the C allocator to keep freed memory for the next allocation instead of handing it back
/// to the kernel. A network's forward in tensor ops frees each op's output when the next op has
/// read it; glibc unmaps every block above its mmap threshold (32 MiB at most) on free, so each
/// pass would fault in and zero its large activations afresh (in `perf` of repeated 1024²
/// passes of the arbitrary and cin26 networks, a quarter of the samples were the kernel
/// clearing fresh pages). With `M_MMAP_MAX` 0 large blocks come
/// from the heap and with `M_TRIM_THRESHOLD` at its maximum the heap is never shrunk, so freed
/// activations are reused. For processes that end when their work does (the CLI, benchmarks):
/// the resident size stays at its peak. glibc only; elsewhere nothing happens. Returns whether
/// the allocator took both settings.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` changes allocator parameters, valid at any time; it touches no
        // memory of ours.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Buffers a default [`Scratch`] keeps.
const DEFAULT_KEPT: usize = 16;

/// Recycled f32 buffers for one network pass: large fresh allocations cost a page fault and a
/// kernel-zeroed page per 4 KiB, which for the small predictor layers took longer than the convs.
pub struct Scratch {
    free: Vec<Vec<f32>>,
    /// How many buffers [`Scratch::give`] keeps.
    kept: usize,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::keeping(DEFAULT_KEPT)
    }
}

impl Scratch {
    /// An empty scratch that keeps up to `kept` buffers (a pass with a backward holds many
    /// activations at once).
    pub fn keeping(kept: usize) -> Self {
        Self {
            free: Vec::new(),
            kept,
        }
    }

    /// A buffer of `len` floats with unspecified (initialised) contents.
    pub fn take(&mut self, len: usize) -> Vec<f32> {
        // Prefer the shortest buffer already `len` long (nothing to initialise), else the one
        // with room that is longest (least to zero).
        let ready = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.len() >= len)
            .min_by_key(|(_, v)| v.len())
            .map(|(i, _)| i);
        let roomy = || {
            self.free
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= len)
                .max_by_key(|(_, v)| v.len())
                .map(|(i, _)| i)
        };
        // Else grow the largest (one reallocation, instead of a new buffer beside the kept
        // ones: the kept memory stays near the pass's working set).
        let largest = || {
            self.free
                .iter()
                .enumerate()
                .max_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i)
        };
        let best = ready.or_else(roomy).or_else(largest);
        let mut v = match best {
            Some(i) => self.free.swap_remove(i),
            None => Vec::new(),
        };
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.resize(len, 0.0);
        }
        v
    }

    /// Returns a buffer for reuse (a bounded number are kept).
    pub fn give(&mut self, v: Vec<f32>) {
        if self.free.len() < self.kept && v.capacity() > 0 {
            self.free.push(v);
        }
    }
}

/// The buffers of a network's last native CPU pass, kept for the next one (a fresh pass would
/// page-fault its whole working set in again: a third of the predictor's time). Holds the peak
/// activation memory of the last pass; concurrent passes on one network use fresh buffers.
#[derive(Default)]
pub struct ScratchCache(std::sync::Mutex<Scratch>);

impl ScratchCache {
    /// A cache whose scratch keeps up to `kept` buffers ([`Scratch::keeping`]).
    pub fn keeping(kept: usize) -> Self {
        Self(std::sync::Mutex::new(Scratch::keeping(kept)))
    }

    /// Runs `f` with the cached buffers (or fresh ones while another pass holds them).
    pub fn with<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        match self.0.try_lock() {
            Ok(mut s) => f(&mut s),
            Err(_) => f(&mut Scratch::default()),
        }
    }
}

impl Clone for ScratchCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for ScratchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScratchCache")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc takes the settings, and allocation works on: a large block comes and goes.
    #[test]
    fn freed_memory_is_kept_and_allocation_still_works() {
        assert_eq!(
            keep_freed_memory(),
            cfg!(all(target_os = "linux", target_env = "gnu"))
        );
        let big = vec![1f32; 64 << 20];
        assert_eq!(big[big.len() - 1], 1.0);
        drop(big);
        let again = vec![0f32; 64 << 20];
        assert!(again.iter().all(|&v| v == 0.0));
    }
}
