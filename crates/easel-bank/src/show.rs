//! A human-readable summary of a bank (`easel bank show FILE`).

use std::fmt;

use candle_core::{Result, D};

use crate::bank::Bank;
use crate::file::BankMetadata;
use crate::layout::{groups_name, Layout, StageMap};
use crate::params::ParamsSpec;

/// What `easel bank show` prints: layout, parameterisation, prompt, metadata and the L2 norm
/// of every vector (`--json`: these fields).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BankSummary {
    /// The layout.
    pub layout: Layout,
    /// The parameterisation.
    pub params: ParamsSpec,
    /// Number of trainable scalars.
    pub num_parameters: usize,
    /// Embedding width `D`.
    pub dim: usize,
    /// The prompt template.
    pub template: String,
    /// The placeholder token.
    pub placeholder: String,
    /// The init word.
    pub init_word: String,
    /// The file's metadata (absent for a bank not read from a file).
    pub metadata: Option<BankMetadata>,
    /// `norms[stage][group][token]`: L2 norm of each vector.
    pub norms: Vec<Vec<Vec<f32>>>,
}

impl BankSummary {
    /// Summarises `bank` (computing its vectors once) and its file `metadata`.
    pub fn new(bank: &Bank, metadata: Option<&BankMetadata>) -> Result<Self> {
        let norms = bank
            .vectors()?
            .detach()
            .sqr()?
            .sum(D::Minus1)?
            .sqrt()?
            .to_dtype(candle_core::DType::F32)?
            .to_device(&candle_core::Device::Cpu)?;
        let (s, g, t) = norms.dims3()?;
        let flat = norms.flatten_all()?.to_vec1::<f32>()?;
        let norms = (0..s)
            .map(|i| {
                (0..g)
                    .map(|j| flat[(i * g + j) * t..(i * g + j + 1) * t].to_vec())
                    .collect()
            })
            .collect();
        Ok(Self {
            layout: bank.layout().clone(),
            params: bank.params().spec(),
            num_parameters: bank.vars().iter().map(|v| v.elem_count()).sum(),
            dim: bank.dim(),
            template: bank.prompt().template.clone(),
            placeholder: bank.prompt().placeholder.clone(),
            init_word: bank.init_word().to_string(),
            metadata: metadata.cloned(),
            norms,
        })
    }
}

impl fmt::Display for BankSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.layout;
        writeln!(
            f,
            "layout: {} stages x {} groups ({}) x {} tokens = {} vectors of {} dims",
            l.stages(),
            l.num_groups(),
            groups_name::name(l.groups()),
            l.tokens_per_slot(),
            l.num_vectors(),
            self.dim
        )?;
        match l.stage_map() {
            StageMap::Uniform => writeln!(f, "stage map: uniform")?,
            StageMap::Boundaries(b) => writeln!(f, "stage map: boundaries {b:?}")?,
        }
        if l.slot_map() == crate::layout::SlotMap::Windows {
            writeln!(f, "slot map: windows (stage k, group g reads vector k + g)")?;
        }
        let params = match self.params {
            ParamsSpec::Direct {} => "direct".to_string(),
            ParamsSpec::Generated { heads, mlp_ratio } => {
                format!("generated (heads {heads}, mlp ratio {mlp_ratio})")
            }
            ParamsSpec::Implicit { entries } => format!("implicit ({entries} entries)"),
        };
        writeln!(
            f,
            "parameterisation: {params}, {} trainable values",
            self.num_parameters
        )?;
        writeln!(
            f,
            "prompt: {:?} (placeholder {}), init word {:?}",
            self.template, self.placeholder, self.init_word
        )?;
        if let Some(m) = &self.metadata {
            writeln!(
                f,
                "base model: {} (hash {})",
                m.base_model, m.base_model_hash
            )?;
            writeln!(f, "created: {}", m.created)?;
            writeln!(f, "collection: {}", m.collection_hash)?;
            writeln!(f, "training: {}", m.training)?;
        }
        writeln!(f, "vector norms (L2; tokens of a slot separated by /):")?;
        let cells: Vec<Vec<String>> = self
            .norms
            .iter()
            .map(|stage| {
                stage
                    .iter()
                    .map(|slot| {
                        slot.iter()
                            .map(|n| format!("{n:.3}"))
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .collect()
            })
            .collect();
        let labels: Vec<String> = (0..l.num_groups()).map(|g| l.group_name(g)).collect();
        let width = cells
            .iter()
            .flatten()
            .chain(&labels)
            .map(String::len)
            .max()
            .unwrap_or(0);
        write!(f, "{:>5}", "stage")?;
        for label in &labels {
            write!(f, "  {label:>width$}")?;
        }
        writeln!(f)?;
        for (stage, row) in cells.iter().enumerate() {
            write!(f, "{stage:>5}")?;
            for cell in row {
                write!(f, "  {cell:>width$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
