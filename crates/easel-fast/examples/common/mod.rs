//! What the CPU micro-benchmarks share: their flag parser, the timer and the smooth test picture
//! (the same picture `tools/ref/adain_bench.py` and `tools/ref/arbitrary_bench.py` draw).

// Each example uses the part it needs; the rest would read as dead code there.
#![allow(dead_code)]

use candle_core::{bail, Device, Error, Result, Tensor};
use easel_core::stats::Stats;
use std::collections::HashMap;
use std::time::Instant;

/// The command line of a benchmark: `--name value` options and bare `--switch`es.
pub struct Args {
    values: HashMap<String, String>,
    switches: Vec<String>,
}

impl Args {
    /// Parses the process's arguments; `options` take a value, `switches` do not, anything else
    /// is an error.
    pub fn parse(options: &[&str], switches: &[&str]) -> Result<Self> {
        let mut parsed = Self {
            values: HashMap::new(),
            switches: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if options.contains(&arg.as_str()) {
                let Some(value) = args.next() else {
                    bail!("{arg} needs a value")
                };
                parsed.values.insert(arg, value);
            } else if switches.contains(&arg.as_str()) {
                parsed.switches.push(arg);
            } else {
                bail!("unknown option {arg}")
            }
        }
        Ok(parsed)
    }

    /// The value given to `name`, if any.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The number given to `name`, or `default` where it is not given.
    pub fn number(&self, name: &str, default: usize) -> Result<usize> {
        self.value(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|e| Error::msg(format!("{name} {v}: {e}")))
        })
    }

    /// Whether the switch `name` is given.
    pub fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

/// The milliseconds of `runs` calls of `f` (at least one), after `warmup` untimed calls.
pub fn time_ms(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            f()?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}

/// The median milliseconds of [`time_ms`].
pub fn median_ms(warmup: usize, runs: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    Ok(Stats::of(&time_ms(warmup, runs, f)?)?.median_ms)
}

/// A smooth `[1, 3, n, n]` test picture in [0.05, 0.95]; `phase` shifts its pattern.
pub fn picture(n: usize, phase: f32) -> Result<Tensor> {
    let v: Vec<f32> = (0..3 * n * n)
        .map(|i| {
            let (c, y, x) = (i / (n * n), (i / n) % n, i % n);
            0.5 + 0.45 * ((x as f32 * 0.031 + c as f32 + phase).sin() * (y as f32 * 0.017).cos())
        })
        .collect();
    Tensor::from_vec(v, (1, 3, n, n), &Device::Cpu)
}
