//! `metrics.json` and `metrics.csv`: one row per photo × method, with the metric columns
//! described once (key, label, direction, network) so that no column mixes networks.

use serde_json::{json, Map, Value as Json};

use crate::run::{Comparison, Outcome};

/// The rows of `comparison` as JSON objects (also embedded in the HTML report).
pub fn rows(comparison: &Comparison) -> Vec<Json> {
    comparison
        .cells
        .iter()
        .map(|cell| {
            let photo = &comparison.photos[cell.photo];
            let method = &comparison.methods[cell.method];
            let mut row = Map::new();
            row.insert("photo".into(), json!(photo.name));
            row.insert("photo_path".into(), json!(photo.path));
            row.insert("method".into(), json!(method.label));
            row.insert("spec".into(), json!(method.spec));
            row.insert("column".into(), json!(cell.method + 1));
            match &cell.outcome {
                Outcome::Painted {
                    file,
                    seconds,
                    peak_memory_bytes,
                    width,
                    height,
                    parameters,
                    values,
                    ..
                } => {
                    row.insert("status".into(), json!("painted"));
                    row.insert("file".into(), json!(file));
                    row.insert("seconds".into(), json!(seconds));
                    row.insert("peak_memory_bytes".into(), json!(peak_memory_bytes));
                    row.insert("width".into(), json!(width));
                    row.insert("height".into(), json!(height));
                    let values: Map<String, Json> = values
                        .iter()
                        .map(|v| (v.metric.key.to_string(), json!(v.value)))
                        .collect();
                    row.insert("values".into(), Json::Object(values));
                    row.insert("parameters".into(), json!(parameters));
                }
                Outcome::Failed { error } => {
                    row.insert("status".into(), json!("failed"));
                    row.insert("error".into(), json!(error));
                }
            }
            Json::Object(row)
        })
        .collect()
}

/// The whole comparison as JSON: device, style, metric columns, methods (with load times),
/// photos and rows.
pub fn json_value(comparison: &Comparison) -> Json {
    json!({
        "device": comparison.device,
        "style": comparison.style.as_ref().map(|s| json!({"path": s.path, "name": s.name})),
        "metrics": comparison.metrics,
        "methods": comparison.methods,
        "photos": comparison.photos,
        "rows": rows(comparison),
    })
}

/// `metrics.json`.
pub fn json(comparison: &Comparison) -> String {
    // Serialising plain maps of strings and numbers cannot fail.
    serde_json::to_string_pretty(&json_value(comparison)).unwrap_or_default() + "\n"
}

/// One CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// `metrics.csv`: `photo,method,spec,status,seconds,load_seconds,peak_memory_mib,width,height`,
/// one column per metric (its key), then `error`.
pub fn csv(comparison: &Comparison) -> String {
    let mut header: Vec<String> = [
        "photo",
        "method",
        "spec",
        "status",
        "seconds",
        "load_seconds",
        "peak_memory_mib",
        "width",
        "height",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(comparison.metrics.iter().map(|m| m.key.to_string()));
    header.push("error".into());
    let mut out = header.join(",") + "\n";
    for cell in &comparison.cells {
        let photo = &comparison.photos[cell.photo];
        let method = &comparison.methods[cell.method];
        let mut fields = vec![
            field(&photo.name),
            field(&method.label),
            field(&method.spec),
        ];
        match &cell.outcome {
            Outcome::Painted {
                seconds,
                peak_memory_bytes,
                width,
                height,
                values,
                ..
            } => {
                fields.push("painted".into());
                fields.push(format!("{seconds:.4}"));
                fields.push(format!("{:.4}", method.load_seconds));
                fields.push(
                    peak_memory_bytes
                        .map(|b| format!("{:.1}", b as f64 / (1024.0 * 1024.0)))
                        .unwrap_or_default(),
                );
                fields.push(width.to_string());
                fields.push(height.to_string());
                for metric in &comparison.metrics {
                    let value = values.iter().find(|v| v.metric.key == metric.key);
                    fields.push(value.map(|v| v.value.to_string()).unwrap_or_default());
                }
                fields.push(String::new());
            }
            Outcome::Failed { error } => {
                fields.push("failed".into());
                fields.push(String::new());
                fields.push(format!("{:.4}", method.load_seconds));
                fields.extend(std::iter::repeat_n(
                    String::new(),
                    3 + comparison.metrics.len(),
                ));
                fields.push(field(error));
            }
        }
        out += &fields.join(",");
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(field("arbitrary"), "arbitrary");
        assert_eq!(field("preset 3:0.5,12:0.5"), "\"preset 3:0.5,12:0.5\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
