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

/// A progress hook for weight downloads: one bar per file on stderr.
pub fn download_hook() -> easel_core::ProgressHook {
    use easel_core::DownloadEvent;
    use indicatif::MultiProgress;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    let multi = MultiProgress::new();
    let bars: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} (eta {eta})",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    Arc::new(move |event: DownloadEvent<'_>| {
        // A poisoned lock only means another bar update panicked; the bars are cosmetic.
        let Ok(mut bars) = bars.lock() else { return };
        match event {
            DownloadEvent::Started {
                repo_id,
                file,
                total_bytes,
            } => {
                let bar = multi.add(ProgressBar::new(total_bytes));
                bar.set_style(style.clone());
                bar.set_prefix(format!("{repo_id}/{file}"));
                bars.insert(format!("{repo_id}/{file}"), bar);
            }
            DownloadEvent::Progress {
                repo_id,
                file,
                downloaded_bytes,
                ..
            } => {
                if let Some(bar) = bars.get(&format!("{repo_id}/{file}")) {
                    bar.set_position(downloaded_bytes);
                }
            }
            DownloadEvent::Finished { repo_id, file } => {
                if let Some(bar) = bars.remove(&format!("{repo_id}/{file}")) {
                    bar.finish_and_clear();
                }
            }
        }
    })
}
