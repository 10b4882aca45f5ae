//! Generation parameters stored alongside an output image.

use std::fmt;

/// How an output image was made, stored in PNG output by
/// [`save_image`](crate::save_image) so a result can be reproduced.
///
/// Rendered by [`Parameters::to_text`] in the layout of the AUTOMATIC1111
/// web UI, which existing tools already parse: an optional prompt line, an
/// optional `Negative prompt:` line, then one line of `Key: value` pairs
/// separated by `, `. Values containing `,`, `:`, `"` or a line break are
/// written as a JSON-style quoted string.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameters {
    /// Stylisation method, e.g. `fast` (feed-forward network) or `sd`.
    pub method: String,
    /// Where the style came from: style model files, style images.
    pub styles: Vec<String>,
    /// Style strength in `[0, 1]`, when the method has one.
    pub strength: Option<f64>,
    /// Random seed, when the method uses randomness.
    pub seed: Option<u64>,
    /// Identifiers of the models used (file names, hub ids, hashes).
    pub models: Vec<String>,
    /// Text prompt (diffusion methods).
    pub prompt: Option<String>,
    /// Negative text prompt (diffusion methods).
    pub negative_prompt: Option<String>,
    /// Version of easel that made the image; [`Parameters::new`] fills it in.
    pub easel_version: String,
    /// Any further settings, in the order they should be printed.
    pub extra: Vec<(String, String)>,
}

impl Parameters {
    /// Parameters for `method`, with this crate's version and nothing else set.
    pub fn new(method: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            styles: Vec::new(),
            strength: None,
            seed: None,
            models: Vec::new(),
            prompt: None,
            negative_prompt: None,
            easel_version: env!("CARGO_PKG_VERSION").to_string(),
            extra: Vec::new(),
        }
    }

    /// The settings as ordered `(key, value)` pairs, as they appear on the
    /// settings line of [`Parameters::to_text`] (prompts excluded).
    pub fn entries(&self) -> Vec<(String, String)> {
        let mut entries = vec![("Method".to_string(), self.method.clone())];
        match self.styles.as_slice() {
            [] => {}
            [one] => entries.push(("Style".to_string(), one.clone())),
            many => entries.push(("Styles".to_string(), many.join(", "))),
        }
        if let Some(strength) = self.strength {
            entries.push(("Strength".to_string(), strength.to_string()));
        }
        if let Some(seed) = self.seed {
            entries.push(("Seed".to_string(), seed.to_string()));
        }
        match self.models.as_slice() {
            [] => {}
            [one] => entries.push(("Model".to_string(), one.clone())),
            many => entries.push(("Models".to_string(), many.join(", "))),
        }
        entries.extend(self.extra.iter().cloned());
        entries.push(("Easel version".to_string(), self.easel_version.clone()));
        entries
    }

    /// The text block stored in the PNG `parameters` chunk.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        if let Some(prompt) = &self.prompt {
            text.push_str(prompt);
            text.push('\n');
        }
        if let Some(negative) = &self.negative_prompt {
            text.push_str("Negative prompt: ");
            text.push_str(negative);
            text.push('\n');
        }
        let settings: Vec<String> = self
            .entries()
            .iter()
            .map(|(key, value)| format!("{}: {}", key.replace([',', ':', '\n'], " "), quote(value)))
            .collect();
        text.push_str(&settings.join(", "));
        text
    }
}

impl fmt::Display for Parameters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// Quotes `value` if it would otherwise break the `Key: value, ...` line.
fn quote(value: &str) -> String {
    if !value.contains([',', ':', '"', '\n', '\r']) {
        return value.to_string();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}
