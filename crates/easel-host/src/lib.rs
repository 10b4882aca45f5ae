//! easel-host: the style host. Given a style (a fast method with its paintings or preset mix, a
//! prompt, a prompt bank) and a request (photo, size, strength, seed, device, dtype, method
//! options), it resolves and loads what is needed and paints.
//!
//! - [`sources`]: which files make a Stable Diffusion 1.x model and its ControlNet (hub ids,
//!   diffusers folders, single files; fp16 preference; tokenizer fallback), resolved in one
//!   hub call and loaded.
//! - [`controlnet_registry`]: the ControlNets known by default (`controlnet/*.toml`).
//! - [`fast`]: the fast methods (arbitrary, presets, AdaIN, StyTr²): their weight files,
//!   loading once, painting photos.
//! - [`gatys`]: optimisation-based style transfer (Gatys et al.) on the embedded
//!   EfficientNet-Lite0: settings checked, paintings and mask loaded, one photo optimised.
//! - [`spec`]: the style-reference grammar of `--use` (`preset:7`, `adain:DIR@strength=0.6`).
//! - [`diffusion`]: the diffusion request's settings, checked; the canvas of a photo; one photo
//!   painted with its parameters.
//!
//! - [`host`]: [`Host`], which paints with any [`Style`] and keeps what it loaded.
//!
//! Front ends (the `easel` CLI's `stylize`, `learn`, `bench`, `compare`) parse their input
//! into these types and print the results; errors are [`HostError`]s, which name the
//! offending value and leave the wording of flags to the front end.

pub mod controlnet_registry;
pub mod diffusion;
pub mod error;
pub mod fast;
pub mod gatys;
pub mod host;
pub mod sources;
pub mod spec;

pub use error::{HostError, ModelRole, Result, Setting};
pub use host::{Host, PaintRequest, Painting, Style};
