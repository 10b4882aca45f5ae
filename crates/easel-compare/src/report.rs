//! `report.html`: the comparison as one self-contained page. Images are inlined as data URIs
//! and a Content-Security-Policy allows nothing else, so the file works offline from disk and
//! no request leaves it. It holds:
//!
//! - the grid (photo | style | methods), each cell with its time, its full parameters and
//!   two buttons that put it on side A or B of the comparison pane;
//! - the comparison pane: A and B stacked with a before/after slider (a range input, so it
//!   moves by keyboard) and a toggle (button or the `t` key);
//! - the metrics table per photo, each column with its direction (↑/↓) and network, the best
//!   value per photo marked;
//! - a 0–5 rating and a "best" choice per cell, downloadable as `ratings.json`.

use base64::Engine;
use easel_metrics::Better;
use image::RgbImage;
use serde_json::json;

use crate::run::{Comparison, Outcome};

/// Images wider or taller than this are shown downscaled (the cell files keep full size).
const REPORT_MAX_SIDE: u32 = 512;

/// `text` escaped for HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `img` as a PNG data URI (downscaled to the report's size).
fn data_uri(img: &RgbImage) -> String {
    let img = easel_core::downscale_to_fit(img.clone(), REPORT_MAX_SIDE);
    // Encoding an in-memory RGB image without parameters cannot fail.
    let png = easel_core::encode_png(&img, None).unwrap_or_default();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// For each photo and metric, the method index with the best value (ties: the first).
fn best_per_photo(comparison: &Comparison) -> Vec<Vec<Option<usize>>> {
    (0..comparison.photos.len())
        .map(|photo| {
            comparison
                .metrics
                .iter()
                .map(|metric| {
                    let mut best: Option<(usize, f64)> = None;
                    for cell in comparison.cells.iter().filter(|c| c.photo == photo) {
                        let Outcome::Painted { values, .. } = &cell.outcome else {
                            continue;
                        };
                        let Some(v) = values.iter().find(|v| v.metric.key == metric.key) else {
                            continue;
                        };
                        if !v.value.is_finite() {
                            continue;
                        }
                        let better = match best {
                            None => true,
                            Some((_, b)) => match metric.better {
                                Better::Higher => v.value > b,
                                Better::Lower => v.value < b,
                            },
                        };
                        if better {
                            best = Some((cell.method, v.value));
                        }
                    }
                    best.map(|(m, _)| m)
                })
                .collect()
        })
        .collect()
}

const STYLE: &str = r#"
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5em; color: #202020; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; }
.grid td, .grid th { vertical-align: top; padding: 6px; text-align: left; }
.grid img { max-width: 256px; max-height: 256px; display: block; }
.grid figure { margin: 0; }
.failed { color: #b00020; max-width: 256px; }
.pick button { margin-right: 4px; }
button[aria-pressed="true"] { background: #234; color: #fff; }
#viewer { width: min(640px, 90vw); }
#pane { position: relative; border: 1px solid #ccc; }
#pane img { display: block; width: 100%; height: auto; }
#side-b { position: absolute; left: 0; top: 0; }
#slider { width: 100%; }
.metrics td, .metrics th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
.metrics th:first-child, .metrics td:first-child { text-align: left; }
.best { background: #d8f0d8; font-weight: bold; }
details pre { white-space: pre-wrap; max-width: 256px; font-size: 12px; }
:focus-visible { outline: 3px solid #2a6fdb; outline-offset: 2px; }
"#;

const SCRIPT: &str = r#"
(function () {
  const data = JSON.parse(document.getElementById('data').textContent);
  const a = document.getElementById('side-a'), b = document.getElementById('side-b');
  const slider = document.getElementById('slider'), toggle = document.getElementById('toggle');
  const labelA = document.getElementById('label-a'), labelB = document.getElementById('label-b');
  let showB = true;
  function clip() {
    b.style.clipPath = showB ? 'inset(0 0 0 ' + slider.value + '%)' : 'inset(0 0 0 100%)';
    slider.setAttribute('aria-valuetext', 'A ' + slider.value + '%, B ' + (100 - slider.value) + '%');
  }
  function pick(side, button) {
    const img = button.closest('td').querySelector('img');
    if (!img) return;
    (side === 'a' ? a : b).src = img.src;
    (side === 'a' ? labelA : labelB).textContent = button.dataset.label;
    document.querySelectorAll('button[data-side="' + side + '"]').forEach(function (x) {
      x.setAttribute('aria-pressed', x === button ? 'true' : 'false');
    });
    clip();
  }
  document.querySelectorAll('button[data-side]').forEach(function (button) {
    button.addEventListener('click', function () { pick(button.dataset.side, button); });
  });
  slider.addEventListener('input', clip);
  toggle.addEventListener('click', function () { showB = !showB; clip(); });
  document.addEventListener('keydown', function (e) {
    if (e.key === 't' && !(e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement)) {
      showB = !showB; clip();
    }
  });
  clip();
  window.easelRatings = function () {
    const photos = data.photos.map(function (photo, p) {
      const ratings = {};
      document.querySelectorAll('select[data-photo="' + p + '"]').forEach(function (s) {
        if (s.value !== '') ratings[data.methods[s.dataset.method].spec] = Number(s.value);
      });
      const best = document.querySelector('input[name="best-' + p + '"]:checked');
      return { photo: photo.name, path: photo.path, ratings: ratings,
               best: best ? data.methods[best.value].spec : null };
    });
    return { format: 'easel-ratings', version: 1, scale: '0-5',
             methods: data.methods.map(function (m) { return m.spec; }), photos: photos };
  };
  document.getElementById('download').addEventListener('click', function () {
    const blob = new Blob([JSON.stringify(window.easelRatings(), null, 2)], { type: 'application/json' });
    const link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = 'ratings.json';
    document.body.appendChild(link);
    link.click();
    link.remove();
  });
})();
"#;

/// The report of `comparison`.
pub fn html(comparison: &Comparison) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    // Nothing but inline code and data-URI images may load: the page never reaches out.
    h.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         img-src data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n",
    );
    h.push_str("<title>easel compare</title>\n<style>");
    h.push_str(STYLE);
    h.push_str("</style>\n</head>\n<body>\n<h1>easel compare</h1>\n");
    h.push_str(&format!(
        "<p>{} photo(s) × {} style(s) on {}. Times are warm and exclude loading (per style: {}).</p>\n",
        comparison.photos.len(),
        comparison.methods.len(),
        escape(&comparison.device),
        comparison
            .methods
            .iter()
            .map(|m| format!("{} {:.2} s", escape(&m.label), m.load_seconds))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // The comparison pane.
    h.push_str("<h2>Before / after</h2>\n<p>Choose A and B with the buttons under the images; the slider (arrow keys) moves the split, <kbd>t</kbd> or the button toggles.</p>\n");
    let first = comparison.photos.first().map(|r| data_uri(&r.image));
    let first = first.unwrap_or_default();
    let first_cell = comparison.cells.iter().find_map(|c| match &c.outcome {
        Outcome::Painted { image, .. } => Some((c.method, data_uri(image))),
        Outcome::Failed { .. } => None,
    });
    let (b_label, b_src) = match &first_cell {
        Some((m, uri)) => (comparison.methods[*m].label.clone(), uri.clone()),
        None => ("photo".to_string(), first.clone()),
    };
    h.push_str(&format!(
        "<p>A: <span id=\"label-a\">photo</span> · B: <span id=\"label-b\">{}</span></p>\n\
         <div id=\"viewer\"><div id=\"pane\"><img id=\"side-a\" alt=\"side A\" src=\"{first}\"><img id=\"side-b\" alt=\"side B\" src=\"{b_src}\"></div>\n\
         <p><input id=\"slider\" type=\"range\" min=\"0\" max=\"100\" value=\"50\" aria-label=\"Before/after split\"> \
         <button id=\"toggle\" type=\"button\">Toggle B</button></p></div>\n",
        escape(&b_label)
    ));

    // The grid.
    h.push_str("<h2>Grid</h2>\n<table class=\"grid\">\n<tr><th>photo</th><th>style</th>");
    for m in &comparison.methods {
        h.push_str(&format!("<th>{}</th>", escape(&m.label)));
    }
    h.push_str("</tr>\n");
    let style_uri = comparison.style.as_ref().map(|s| data_uri(&s.image));
    for (p, row) in comparison.photos.iter().enumerate() {
        let photo_uri = data_uri(&row.image);
        h.push_str(&format!(
            "<tr><td><figure><img alt=\"photo {name}\" src=\"{photo_uri}\"><figcaption>{name} {w}×{hgt}</figcaption></figure>{pick}</td>",
            name = escape(&row.name),
            w = row.width,
            hgt = row.height,
            pick = pick_buttons(&format!("photo {}", row.name)),
        ));
        match (&style_uri, &comparison.style) {
            (Some(uri), Some(style)) => h.push_str(&format!(
                "<td><figure><img alt=\"style {name}\" src=\"{uri}\"><figcaption>{name}</figcaption></figure>{pick}</td>",
                name = escape(&style.name),
                pick = pick_buttons(&format!("style {}", style.name)),
            )),
            _ => h.push_str("<td>no style image</td>"),
        }
        for (m, method) in comparison.methods.iter().enumerate() {
            let label = format!("{} · {}", method.label, row.name);
            match comparison.cell(p, m).map(|c| &c.outcome) {
                Some(Outcome::Painted {
                    image,
                    seconds,
                    parameters,
                    ..
                }) => h.push_str(&format!(
                    "<td><figure><img alt=\"{alt}\" src=\"{uri}\"><figcaption>{seconds:.2} s</figcaption></figure>{pick}\
                     <p><label>rating <select aria-label=\"rating of {alt}\" data-photo=\"{p}\" data-method=\"{m}\"><option value=\"\">–</option>{options}</select></label> \
                     <label><input type=\"radio\" name=\"best-{p}\" value=\"{m}\"> best</label></p>\
                     <details><summary>parameters</summary><pre>{params}</pre></details></td>",
                    alt = escape(&label),
                    uri = data_uri(image),
                    pick = pick_buttons(&label),
                    options = (0..=5).map(|r| format!("<option>{r}</option>")).collect::<String>(),
                    params = escape(parameters),
                )),
                Some(Outcome::Failed { error }) => h.push_str(&format!(
                    "<td><p class=\"failed\">failed: {}</p></td>",
                    escape(error)
                )),
                None => h.push_str("<td class=\"failed\">not painted</td>"),
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    h.push_str("<p><button id=\"download\" type=\"button\">Download ratings (JSON)</button></p>\n");

    // The metrics.
    h.push_str("<h2>Metrics</h2>\n<p>↑: higher is better, ↓: lower is better; the best value per photo is marked.");
    let mut networks: Vec<&str> = comparison
        .metrics
        .iter()
        .filter_map(|m| m.network.as_deref())
        .collect();
    networks.dedup();
    if !networks.is_empty() {
        h.push_str(&format!(" Networks: {}.", escape(&networks.join("; "))));
    }
    h.push_str("</p>\n");
    let best = best_per_photo(comparison);
    for (p, row) in comparison.photos.iter().enumerate() {
        h.push_str(&format!(
            "<h3>{}</h3>\n<table class=\"metrics\">\n<tr><th>style</th><th>time s ↓</th><th>peak MiB ↓</th>",
            escape(&row.name)
        ));
        for metric in &comparison.metrics {
            let arrow = match metric.better {
                Better::Higher => "↑",
                Better::Lower => "↓",
            };
            let title = metric.network.as_deref().unwrap_or("no network");
            h.push_str(&format!(
                "<th title=\"{}\">{} {arrow}</th>",
                escape(title),
                escape(metric.label)
            ));
        }
        h.push_str("</tr>\n");
        for (m, method) in comparison.methods.iter().enumerate() {
            h.push_str(&format!("<tr><td>{}</td>", escape(&method.label)));
            match comparison.cell(p, m).map(|c| &c.outcome) {
                Some(Outcome::Painted {
                    seconds,
                    peak_memory_bytes,
                    values,
                    ..
                }) => {
                    h.push_str(&format!("<td>{seconds:.3}</td>"));
                    h.push_str(&format!(
                        "<td>{}</td>",
                        peak_memory_bytes
                            .map(|b| format!("{:.0}", b as f64 / (1024.0 * 1024.0)))
                            .unwrap_or_else(|| "–".to_string())
                    ));
                    for (k, metric) in comparison.metrics.iter().enumerate() {
                        let value = values.iter().find(|v| v.metric.key == metric.key);
                        let class = if best[p][k] == Some(m) {
                            " class=\"best\""
                        } else {
                            ""
                        };
                        h.push_str(&format!(
                            "<td{class}>{}</td>",
                            value
                                .map(|v| format!("{:.4}", v.value))
                                .unwrap_or_else(|| "–".to_string())
                        ));
                    }
                }
                _ => h.push_str(&format!(
                    "<td colspan=\"{}\" class=\"failed\">failed</td>",
                    2 + comparison.metrics.len()
                )),
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    }

    let data = json!({
        "photos": comparison.photos.iter().map(|r| json!({"name": r.name, "path": r.path})).collect::<Vec<_>>(),
        "methods": comparison.methods,
    });
    // `</` inside the JSON would end the script element early.
    let data = data.to_string().replace("</", "<\\/");
    h.push_str(&format!(
        "<script type=\"application/json\" id=\"data\">{data}</script>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    ));
    h
}

/// The A/B buttons of a cell labelled `label`.
fn pick_buttons(label: &str) -> String {
    let label = escape(label);
    format!(
        "<div class=\"pick\"><button type=\"button\" data-side=\"a\" data-label=\"{label}\" aria-pressed=\"false\" aria-label=\"show {label} as A\">A</button>\
         <button type=\"button\" data-side=\"b\" data-label=\"{label}\" aria-pressed=\"false\" aria-label=\"show {label} as B\">B</button></div>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_special_characters_are_escaped() {
        assert_eq!(
            escape("<a href=\"x\">Tom & Jerry's</a>"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;"
        );
    }
}
