//! `easel styles`: install, list, show, check, rename and remove style plugins.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use easel_styles::folder::FolderStyle;
use easel_styles::plugin::keys;
use easel_styles::{Entry, Kind, PluginInfo, PluginSource, Store};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Args)]
#[command(
    about = "Manage installed style plugins (in $EASEL_HOME/styles, else the XDG data folder)",
    after_help = "Examples:\n  easel styles install vangogh.bank --name vangogh\n  \
                  easel styles install adain-weights/ --name adain\n  \
                  easel styles install preset:3:0.5,12:0.5 --name calm\n  \
                  easel styles install painting:starry_night.jpg --name starry\n  \
                  easel styles list --json\n  \
                  easel stylize photo.jpg --use starry -o out.png"
)]
pub struct StylesArgs {
    #[command(subcommand)]
    command: StylesCommand,
}

#[derive(Subcommand)]
enum StylesCommand {
    /// Install a plugin file, a bank file, a textual-inversion embedding (diffusers, A1111 or
    /// kohya), an AdaIN or StyTr² weights folder, a hub repository's style, `preset:MIX` or
    /// `painting:IMAGE` (that painting's style for the arbitrary network).
    Install(InstallArgs),
    /// List installed plugins.
    List(ListArgs),
    /// Show one plugin's metadata.
    Show(ShowArgs),
    /// Remove a plugin.
    Remove(NameArgs),
    /// Check plugins' hashes (all when no name is given).
    Verify(VerifyArgs),
    /// Rename a plugin.
    Rename(RenameArgs),
}

#[derive(Args)]
struct InstallArgs {
    /// A plugin, bank or embedding file, an AdaIN or StyTr² weights folder, preset:MIX,
    /// painting:IMAGE, or a hub repository org/name[@revision] holding easel-style.safetensors
    /// (a plugin) or learned_embeds.safetensors (a diffusers textual inversion).
    #[arg(value_name = "FILE|DIR|HUB-ID|preset:MIX|painting:IMAGE")]
    source: String,
    /// Never download a hub repository's style: use only the Hugging Face cache (same as
    /// HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// Name to use it by (default: its title).
    #[arg(long)]
    name: Option<String>,
    /// Replace an installed plugin of the same name.
    #[arg(long)]
    force: bool,
    /// Title (modelspec.title).
    #[arg(long)]
    title: Option<String>,
    /// Description (modelspec.description).
    #[arg(long)]
    description: Option<String>,
    /// Author (modelspec.author).
    #[arg(long)]
    author: Option<String>,
    /// Licence (modelspec.license).
    #[arg(long)]
    license: Option<String>,
    /// Picture for the thumbnail (default: the painting, for painting:IMAGE).
    #[arg(long, value_name = "IMAGE")]
    thumbnail: Option<PathBuf>,
    /// Check that a bank fits this Stable Diffusion model (hub id, diffusers folder or
    /// checkpoint; local only): another embedding width is refused.
    #[arg(long, value_name = "MODEL")]
    sd: Option<String>,
    /// StyTr² attention heads (default: the published 8).
    #[arg(long)]
    stytr_heads: Option<usize>,
    /// StyTr² CAPE grid side (default: the published 18).
    #[arg(long)]
    stytr_cape_grid: Option<usize>,
    /// StyTr² pyramid windows in tokens (default: the published 8,16,32).
    #[arg(long, value_delimiter = ',')]
    stytr_windows: Option<Vec<usize>>,
    /// Print the installed entry as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ListArgs {
    /// Only this kind (bank, adain, stytr, preset-mix, style-code).
    #[arg(long)]
    kind: Option<String>,
    /// Only banks learned on this base model.
    #[arg(long)]
    base: Option<String>,
    /// Only names or titles containing this text (case-insensitive).
    #[arg(long)]
    search: Option<String>,
    /// List the plugins and textual-inversion embeddings of this folder where they lie (such
    /// as AUTOMATIC1111's embeddings/) instead of the installed ones; paint with one by its
    /// path (`stylize --use DIR/NAME.safetensors`).
    #[arg(long, value_name = "DIR", conflicts_with = "base")]
    folder: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ShowArgs {
    /// The plugin's name.
    name: String,
    /// Write its thumbnail (PNG) here.
    #[arg(long, value_name = "FILE")]
    preview: Option<PathBuf>,
    /// Say whether a bank fits this Stable Diffusion model (hub id, diffusers folder or
    /// checkpoint; local only).
    #[arg(long, value_name = "MODEL")]
    sd: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct NameArgs {
    /// The plugin's name.
    name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// The plugin's name (default: every installed plugin).
    name: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RenameArgs {
    /// The current name.
    old: String,
    /// The new name.
    new: String,
}

#[derive(Serialize)]
struct Verified {
    name: String,
    id: String,
    ok: bool,
    problem: Option<String>,
}

/// The base model a bank must fit: `sd` (hub id, folder or checkpoint), local files only.
fn base_model(sd: &str) -> Result<easel_bank::file::BaseModelInfo> {
    easel_host::sources::ModelSources {
        sd: Some(sd.to_string()),
        sd_config: None,
        controlnet: None,
        offline: true,
        hints: crate::args::source_hints(),
    }
    .base_model()
    .map_err(crate::args::word)
}

/// The published StyTr² settings with the given ones in their place.
fn stytr_settings(
    heads: Option<usize>,
    grid: Option<usize>,
    windows: Option<Vec<usize>>,
) -> easel_fast::import::stytr::Settings {
    let published = easel_fast::import::stytr::Settings::published();
    easel_fast::import::stytr::Settings {
        nhead: heads.unwrap_or(published.nhead),
        cape_grid: grid.unwrap_or(published.cape_grid),
        pyramid_windows: windows.unwrap_or(published.pyramid_windows),
    }
}

fn print_entry(entry: &Entry) {
    let base = if entry.base_model.is_empty() {
        String::new()
    } else {
        format!("  (on {})", entry.base_model)
    };
    println!(
        "{:<24} {:<10} {}{base}",
        entry.name,
        entry.kind.name(),
        entry.title
    );
}

fn print_folder_style(style: &FolderStyle) {
    let what = match (&style.problem, style.kind, style.vectors) {
        (Some(problem), _, _) => format!("unusable: {problem}"),
        (None, _, Some((n, width))) => format!("{}, {n} × {width}", style.format),
        (None, Some(kind), None) => format!("plugin, {}", kind.name()),
        (None, None, None) => style.format.to_string(),
    };
    let title = if style.title.is_empty() || style.title == style.name {
        String::new()
    } else {
        format!("  ({})", style.title)
    };
    println!("{:<24} {what}{title}", style.name);
}

pub fn run(args: StylesArgs) -> Result<()> {
    let store = Store::from_env()?;
    match args.command {
        StylesCommand::Install(a) => {
            let hub = easel_core::HubResolver::from_env()?;
            let hub = hub.with_progress(crate::progress::download_hook());
            let hub = if a.offline {
                hub.with_offline(true)
            } else {
                hub
            };
            let (source, hub_title) = PluginSource::resolve(&a.source, &hub)?;
            let thumbnail = match &a.thumbnail {
                Some(path) => Some(easel_core::load_rgb(
                    path,
                    &easel_core::LoadOptions::with_max_side(1024),
                )?),
                None => None,
            };
            let info = PluginInfo {
                title: a.title.or(hub_title),
                description: a.description,
                author: a.author,
                license: a.license,
                thumbnail,
                stytr: Some(stytr_settings(
                    a.stytr_heads,
                    a.stytr_cape_grid,
                    a.stytr_windows,
                )),
            };
            let fit = a.sd.as_deref().map(base_model).transpose()?;
            let (entry, warning) = store
                .install(&source, &info, a.name.as_deref(), a.force, fit.as_ref())
                .map_err(|e| match e {
                    easel_styles::PluginError::NameTaken { .. } => {
                        anyhow::anyhow!(
                            "{e}; pass --force to replace it or --name to choose another"
                        )
                    }
                    other => other.into(),
                })?;
            if let Some(warning) = warning {
                eprintln!("warning: {warning}");
            }
            if a.json {
                println!("{}", serde_json::to_string_pretty(&entry)?);
            } else {
                eprintln!(
                    "installed {} ({}, id {}) in {}",
                    entry.name,
                    entry.kind.name(),
                    entry.id,
                    store.dir().display()
                );
            }
        }
        StylesCommand::List(a) => {
            let kind = match &a.kind {
                Some(k) => Some(Kind::parse(k).with_context(|| {
                    format!("--kind {k}: not a kind (bank, adain, stytr, preset-mix, style-code)")
                })?),
                None => None,
            };
            let search = a.search.as_ref().map(|s| s.to_lowercase());
            let found = |name: &str, title: &str| {
                search.as_ref().is_none_or(|t| {
                    name.to_lowercase().contains(t) || title.to_lowercase().contains(t)
                })
            };
            if let Some(dir) = &a.folder {
                let styles: Vec<FolderStyle> = easel_styles::folder::list_folder(dir)?
                    .into_iter()
                    .filter(|s| kind.is_none_or(|k| s.kind == Some(k)))
                    .filter(|s| found(&s.name, &s.title))
                    .collect();
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&styles)?);
                } else if styles.is_empty() {
                    eprintln!("no styles in {}", dir.display());
                } else {
                    styles.iter().for_each(print_folder_style);
                }
                return Ok(());
            }
            let entries: Vec<Entry> = store
                .list()?
                .into_iter()
                .filter(|e| kind.is_none_or(|k| e.kind == k))
                .filter(|e| a.base.as_ref().is_none_or(|b| &e.base_model == b))
                .filter(|e| found(&e.name, &e.title))
                .collect();
            if a.json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else if entries.is_empty() {
                eprintln!("no styles installed in {}", store.dir().display());
            } else {
                entries.iter().for_each(print_entry);
            }
        }
        StylesCommand::Show(a) => {
            let (entry, header) = store.show(&a.name)?;
            if let Some(preview) = &a.preview {
                let png = header
                    .metadata
                    .get(keys::THUMBNAIL)
                    .and_then(|uri| easel_styles::convert::thumbnail_png(uri))
                    .with_context(|| format!("{} has no thumbnail", entry.name))?;
                easel_core::write_output(preview, &png, &[])?;
            }
            let fit = match &a.sd {
                Some(sd) => Some(
                    match easel_styles::convert::check_fit(&header, &entry.name, &base_model(sd)?) {
                        Ok(None) => format!("fits {sd}"),
                        Ok(Some(warning)) => warning,
                        Err(e) => e.to_string(),
                    },
                ),
                None => None,
            };
            // The thumbnail is long; --preview writes it out.
            let mut metadata = header.metadata.clone();
            if let Some(t) = metadata.get_mut(keys::THUMBNAIL) {
                *t = format!("({} bytes of PNG data URI)", t.len());
            }
            if a.json {
                let shown = serde_json::json!({
                    "entry": entry,
                    "file": store.path_of(&entry),
                    "metadata": metadata,
                    "tensors": header.shapes,
                    "fit": fit,
                });
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                println!("{} ({}, id {})", entry.name, entry.kind.name(), entry.id);
                println!("file: {}", store.path_of(&entry).display());
                for (k, v) in &metadata {
                    println!("{k}: {v}");
                }
                println!("tensors: {}", header.shapes.len());
                if let Some(fit) = &fit {
                    println!("fit: {fit}");
                }
            }
        }
        StylesCommand::Remove(a) => {
            let entry = store.remove(&a.name)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&entry)?);
            } else {
                eprintln!("removed {} (id {})", entry.name, entry.id);
            }
        }
        StylesCommand::Verify(a) => {
            let results = store.verify(a.name.as_deref())?;
            let records: Vec<Verified> = results
                .iter()
                .map(|(e, r)| Verified {
                    name: e.name.clone(),
                    id: e.id.clone(),
                    ok: r.is_ok(),
                    problem: r.as_ref().err().map(|e| e.to_string()),
                })
                .collect();
            if a.json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                for r in &records {
                    match &r.problem {
                        None => println!("ok      {}", r.name),
                        Some(p) => println!("FAILED  {p}"),
                    }
                }
            }
            let failed: Vec<&str> = records
                .iter()
                .filter(|r| !r.ok)
                .map(|r| r.name.as_str())
                .collect();
            if !failed.is_empty() {
                anyhow::bail!(
                    "{} plugin(s) failed verification: {}",
                    failed.len(),
                    failed.join(", ")
                );
            }
        }
        StylesCommand::Rename(a) => {
            let entry = store.rename(&a.old, &a.new)?;
            eprintln!("renamed {} to {} (id {})", a.old, entry.name, entry.id);
        }
    }
    Ok(())
}
