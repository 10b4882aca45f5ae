//! easel pipeline: paint a photo with Stable Diffusion, its structure held by a ControlNet.
//!
//! - [`canny`]: the Canny edge detector that makes the ControlNet's control image.

pub mod canny;
