//! Choosing where the networks run.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{Error, Result};

/// The `--device` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when this build has CUDA and a GPU is present, else CPU.
    #[default]
    Auto,
    /// Always the CPU.
    Cpu,
    /// CUDA device 0; an error if unavailable (no silent fallback).
    Cuda,
}

impl DeviceChoice {
    /// Every choice, in the order they are listed to users.
    pub const ALL: [DeviceChoice; 3] = [DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Cuda];

    /// The name accepted by [`FromStr`] and printed by [`Display`](fmt::Display).
    pub fn name(self) -> &'static str {
        match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeviceChoice {
    type Err = Error;

    /// Parses `auto`, `cpu` or `cuda`, ignoring case and surrounding spaces.
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim();
        DeviceChoice::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| Error::UnknownDevice {
                given: s.to_string(),
            })
    }
}

/// Message for asking for CUDA from a CPU-only build.
const NO_CUDA_BUILD: &str = "this easel was built without CUDA; rebuild with --features cuda";

/// Opens the device for `choice`.
///
/// `Auto` never fails: it falls back to the CPU when CUDA is not compiled in
/// or no GPU can be opened. `Cuda` fails with a clear message in both cases,
/// because a user who asked for the GPU should not silently get a run that
/// is a hundred times slower.
pub fn select_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available() {
                Ok(Device::new_cuda(0).unwrap_or(Device::Cpu))
            } else {
                Ok(Device::Cpu)
            }
        }
        DeviceChoice::Cuda => {
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::Cuda(NO_CUDA_BUILD.to_string()));
            }
            Device::new_cuda(0).map_err(|e| Error::Cuda(format!("cannot open CUDA device 0: {e}")))
        }
    }
}
