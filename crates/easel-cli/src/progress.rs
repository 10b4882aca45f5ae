//! Progress bars on stderr, hidden when stderr is not a terminal (CI logs, pipes).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `len` items of long work, with elapsed time and ETA.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    // The template is a fixed literal known to parse; fall back to the default style otherwise.
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta}) {wide_msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_string());
    bar
}
