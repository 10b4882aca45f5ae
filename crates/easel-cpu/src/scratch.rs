//! Activation buffers: [`zeroed`] for a fresh one (backed by transparent huge pages where the
//! kernel allows it), [`Scratch`] for buffers a network pass takes and gives back.

/// A zeroed buffer of `len` floats. A large one comes fresh from the kernel (`mmap` behind
/// `calloc`, not yet touched); it is advised to be backed by 2 MiB transparent huge pages
/// before its first write, so that filling it takes one page fault per 2 MiB instead of one per
/// 4 KiB. The faults of a fresh 128 MiB activation took longer than the convolution writing it
/// (cin26 at 1024²: 944 → 600–637 ms with huge pages; see docs/performance.md).
pub fn zeroed(len: usize) -> Vec<f32> {
    let v = vec![0f32; len];
    advise_huge_pages(&v);
    v
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(v: &[f32]) {
    /// Bytes of one transparent huge page (x86-64, aarch64 with 4 KiB base pages).
    const HUGE_PAGE: usize = 2 << 20;
    let start = v.as_ptr() as usize;
    let end = start + std::mem::size_of_val(v);
    let (first, last) = (
        start.next_multiple_of(HUGE_PAGE),
        end / HUGE_PAGE * HUGE_PAGE,
    );
    if last > first {
        // SAFETY: [first, last) lies inside `v`'s allocation, which stays alive for the call;
        // MADV_HUGEPAGE changes how the kernel backs those pages, never their contents. The
        // advice may be refused (THP off, old kernel): the pages stay 4 KiB, nothing else
        // changes, so the result is ignored.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: &[f32]) {}

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
            None => return zeroed(len),
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
