//! easel-compare: paints every chosen style on every photo at the same size and seed, measures
//! each result against its photo and style ([`easel_metrics`]), and writes what people need to
//! choose between a fast and a diffusion result:
//!
//! - `cells/<photo>__<n>-<method>.png`: every output with its parameters chunk;
//! - `grid.png`: a row per photo, columns photo | style | one per method, labelled and timed;
//! - `report.html`: the same, self-contained, with a before/after slider, the metrics table
//!   (best per photo marked), every cell's parameters, and ratings to download as JSON;
//! - `metrics.json`, `metrics.csv`: one row per photo × method.
//!
//! [`method`] turns `--use` SPECs into paintable methods (built-ins, plugins, Gatys);
//! [`run`] paints and measures; [`set`] gives KID/FID of a folder of results against a folder of
//! references; [`grid`], [`report`] and [`table`] lay the results out.

pub mod error;
pub mod grid;
pub mod method;
pub mod report;
pub mod run;
pub mod set;
pub mod table;

pub use error::{CompareError, Result};
pub use method::{Method, MethodContext};
pub use run::{Cell, Comparison, Event, Outcome, Plan};
