//! Recycled f32 buffers: a network pass takes and gives back its activations here.

/// Recycled f32 buffers for one network pass: large fresh allocations cost a page fault and a
/// kernel-zeroed page per 4 KiB, which for the small predictor layers took longer than the convs.
#[derive(Default)]
pub struct Scratch {
    free: Vec<Vec<f32>>,
}

impl Scratch {
    /// A buffer of `len` floats with unspecified (initialised) contents.
    pub fn take(&mut self, len: usize) -> Vec<f32> {
        // Prefer the shortest buffer already `len` long (nothing to initialise), else the one
        // with room that is longest (least to zero), else a new one.
        let ready = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.len() >= len)
            .min_by_key(|(_, v)| v.len())
            .map(|(i, _)| i);
        let best = ready.or_else(|| {
            self.free
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= len)
                .max_by_key(|(_, v)| v.len())
                .map(|(i, _)| i)
        });
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
        if self.free.len() < 16 && v.capacity() > 0 {
            self.free.push(v);
        }
    }
}
