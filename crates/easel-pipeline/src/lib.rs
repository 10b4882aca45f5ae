//! easel pipeline: paint a photo with Stable Diffusion, its structure held by a ControlNet.
//!
//! - [`canny`]: the Canny edge detector that makes the ControlNet's control image.
//! - [`models`]: loading SD 1.x and ControlNet weights (diffusers folders, single files).
//! - [`scheduler_config`]: the noise schedule from a diffusers `scheduler_config.json`.
//! - [`conditioning`]: prompt or staged (prompt-bank) contexts for the denoiser.
//! - [`noise`]: seeded or replayed noise.
//! - [`pipeline`]: the ControlNet-guided img2img loop.

pub mod canny;
pub mod conditioning;
pub mod models;
pub mod noise;
pub mod pipeline;
pub mod scheduler_config;
