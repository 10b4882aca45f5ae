//! The thread pool every kernel splits its work units over, and the pointer wrapper they share.
//!
//! [`par_for`] runs items `0..n` in chunks taken from a shared cursor by the calling thread and
//! up to `candle_core::utils::get_num_threads() − 1` helpers of one persistent pool. The caller
//! never waits for a helper that has not started: helpers join a job only while it is open, and
//! once the caller has taken the last chunk it closes the job and waits only for helpers already
//! inside. Idle helpers block on a condition variable (no spinning). On a loaded machine this
//! degrades to the caller doing the work alone instead of stalling each op for a scheduling
//! slice, which spawned-and-joined threads or a barrier do.
//!
//! A panic in a helper's share is caught there (so the caller is still released), carried back
//! and re-raised on the calling thread once every helper has left: the items the panicking chunk
//! skipped are never returned as if computed. [`catch_panic`] turns such a panic into an error at
//! an op's boundary.

use std::any::Any;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

/// A raw output pointer shared by the pool's threads, each writing a region no other touches.
#[derive(Clone, Copy)]
pub struct SharedMut(*mut f32);

// SAFETY: a `SharedMut` is only made by the kernels (and `par_chunks_mut`) of this workspace,
// whose work units write disjoint regions of a buffer that outlives the `par_for` call; the
// pointer itself is plain data.
unsafe impl Send for SharedMut {}
// SAFETY: as for `Send`: shared references only hand out the pointer, and the regions written
// through it are disjoint per unit.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Wraps the start of `buf` (whose regions the caller's units write disjointly).
    pub fn new(buf: &mut [f32]) -> Self {
        Self(buf.as_mut_ptr())
    }

    /// Wraps a pointer the caller holds a buffer behind (read through `cast_const` when the
    /// buffer is only read).
    pub fn from_ptr(ptr: *mut f32) -> Self {
        Self(ptr)
    }

    /// The pointer (a method, so that closures capture the `Sync` wrapper, not the field).
    #[inline(always)]
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// Runs `f` on the items `0..n`, in chunks spread over the calling thread and the pool's helpers
/// (inline for one thread or one item). A panic in any chunk is re-raised on this thread after
/// every helper has finished.
pub fn par_for(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let threads = candle_core::utils::get_num_threads().min(n);
    if threads <= 1 {
        f(0..n);
        return;
    }
    let chunk = n.div_ceil(threads * 4).max(1);
    let cursor = std::sync::atomic::AtomicUsize::new(0);
    let work = || loop {
        let start = cursor.fetch_add(chunk, std::sync::atomic::Ordering::Relaxed);
        if start >= n {
            break;
        }
        f(start..n.min(start + chunk));
    };
    run(threads - 1, &work);
}

/// Calls `f(i, chunk)` for the `chunk_len`-float chunks of `data` (a partial last chunk is left
/// alone), spread over threads as by [`par_for`].
pub fn par_chunks_mut(data: &mut [f32], chunk_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if chunk_len == 0 {
        return;
    }
    let n = data.len() / chunk_len;
    let ptr = SharedMut::new(data);
    par_for(n, |range| {
        for i in range {
            // SAFETY: i < n, so chunk i lies inside `data`; chunks are disjoint and each index is
            // visited once, so no two threads alias.
            let chunk =
                unsafe { std::slice::from_raw_parts_mut(ptr.get().add(i * chunk_len), chunk_len) };
            f(i, chunk);
        }
    });
}

/// Runs `f`, turning a panic in it (or re-raised from a pool helper) into an error naming `what`:
/// an op returns an error, never an output with units left uncomputed.
pub fn catch_panic<T>(
    what: &str,
    f: impl FnOnce() -> candle_core::Result<T>,
) -> candle_core::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        candle_core::bail!(
            "{what}: a worker panicked ({}); no output was produced",
            panic_message(&*payload)
        )
    })
}

/// The message of a panic payload (`panic!` with a literal or a format string).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// A job as the helpers see it: a type-erased `&(dyn Fn() + Sync)` with its lifetime erased.
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn() + Sync + 'static));
// SAFETY: the pointee is `Sync`, and `run` keeps it alive while any helper may call it.
unsafe impl Send for Job {}

struct State {
    job: Option<Job>,
    /// Incremented for every job, so a helper joins each job at most once.
    gen: u64,
    /// Helpers allowed to join the current job.
    wanted: usize,
    /// Helpers inside the current job.
    active: usize,
    /// The first panic a helper caught in the current job, for `run` to re-raise.
    panic: Option<Box<dyn Any + Send>>,
}

struct Pool {
    state: Mutex<State>,
    /// Signals helpers that a job is open.
    start: Condvar,
    /// Signals the caller that the last active helper left.
    done: Condvar,
    helpers: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let helpers = candle_core::utils::get_num_threads().saturating_sub(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            state: Mutex::new(State {
                job: None,
                gen: 0,
                wanted: 0,
                active: 0,
                panic: None,
            }),
            start: Condvar::new(),
            done: Condvar::new(),
            helpers,
        }));
        for i in 0..helpers {
            // A failed spawn only means fewer helpers: the caller does the work.
            let _ = std::thread::Builder::new()
                .name(format!("easel-cpu-{i}"))
                .spawn(move || helper(pool));
        }
        pool
    })
}

impl Pool {
    /// The state; poisoning is ignored (no code panics while holding the lock, and the counters
    /// stay consistent either way).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn helper(pool: &'static Pool) {
    let mut seen = 0u64;
    loop {
        let job = {
            let mut st = pool.lock();
            loop {
                if st.gen != seen {
                    seen = st.gen;
                    if let Some(job) = st.job {
                        if st.wanted > 0 {
                            st.wanted -= 1;
                            st.active += 1;
                            break job;
                        }
                    }
                }
                st = pool.start.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        };
        // SAFETY: `active` was incremented while the job was open, so `run` does not return
        // (and the closure stays alive) until this helper decrements it below.
        let f = unsafe { &*job.0 };
        // Caught so that the caller is still released; handed to it to re-raise.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).err();
        let mut st = pool.lock();
        if let Some(payload) = caught {
            st.panic.get_or_insert(payload);
        }
        st.active -= 1;
        if st.active == 0 {
            pool.done.notify_all();
        }
    }
}

/// Runs `work` on the calling thread and on up to `helpers` pool threads that start while it is
/// still running; returns once every thread that started it has finished, re-raising here the
/// first panic a helper caught.
fn run(helpers: usize, work: &(dyn Fn() + Sync)) {
    let pool = pool();
    let helpers = helpers.min(pool.helpers);
    // SAFETY: only the lifetime is erased; the job is withdrawn below, and `run` waits for every
    // helper that took it, before `work` goes out of scope.
    let job = Job(unsafe {
        std::mem::transmute::<*const (dyn Fn() + Sync + '_), *const (dyn Fn() + Sync + 'static)>(
            work,
        )
    });
    let opened = helpers > 0 && {
        let mut st = pool.lock();
        // Another thread's job still running (nested or concurrent calls): work alone.
        let free = st.job.is_none();
        if free {
            st.job = Some(job);
            st.gen = st.gen.wrapping_add(1);
            st.wanted = helpers;
            st.panic = None;
            pool.start.notify_all();
        }
        free
    };
    // Withdraws the job and waits for the helpers inside it — also if `work` panics — and
    // collects a helper's panic. `self.1`: the job is still open (so this runs once).
    struct Close<'a>(&'a Pool, bool);
    impl Close<'_> {
        fn finish(&mut self) -> Option<Box<dyn Any + Send>> {
            if !std::mem::take(&mut self.1) {
                return None;
            }
            let mut st = self.0.lock();
            // No new helper joins; the job stays in place until its helpers are out and their
            // panic is taken, so that a concurrent `run` works alone instead of opening a job
            // that would reset (or mix into) this one's panic and helper count.
            st.wanted = 0;
            while st.active > 0 {
                st = self.0.done.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            st.job = None;
            st.panic.take()
        }
    }
    impl Drop for Close<'_> {
        fn drop(&mut self) {
            // Only reached open while unwinding from the caller's own panic: that one
            // propagates, a helper's is dropped.
            drop(self.finish());
        }
    }
    let mut close = Close(pool, opened);
    work();
    if let Some(payload) = close.finish() {
        std::panic::resume_unwind(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// Every item is visited exactly once, across the caller and the helpers.
    #[test]
    fn par_for_visits_every_item_once() {
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        par_for(hits.len(), |range| {
            for i in range {
                hits[i].fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    /// A panic in a helper thread's chunk reaches the caller (as a panic from `par_for`, and as
    /// an error through `catch_panic`) instead of being dropped with its items unwritten. The
    /// caller's first chunk waits (up to 10 s) for a helper to take a chunk, so the helper path
    /// is the one exercised whenever the pool has a helper; without one the caller's own panic
    /// must give the same error.
    #[test]
    fn helper_panic_becomes_an_error() {
        let helper_ran = AtomicBool::new(false);
        let result = catch_panic("test op", || {
            par_for(64, |range| {
                let on_helper = std::thread::current()
                    .name()
                    .is_some_and(|n| n.starts_with("easel-cpu-"));
                if on_helper {
                    helper_ran.store(true, Ordering::SeqCst);
                    panic!("injected failure in unit {}", range.start);
                }
                let t0 = Instant::now();
                while !helper_ran.load(Ordering::SeqCst) {
                    if t0.elapsed() > Duration::from_secs(10) {
                        panic!("injected failure in unit {} (no helper)", range.start);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            Ok(())
        });
        let err = result.expect_err("a panicking unit must not give Ok");
        assert!(
            err.to_string()
                .contains("test op: a worker panicked (injected failure in unit"),
            "{err}"
        );
        // The pool is still usable afterwards.
        par_for_visits_every_item_once();
    }
}
