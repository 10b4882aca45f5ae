//! How a bank's prompt vectors are arranged: denoising stages × UNet layer groups × tokens.
//!
//! A bank holds `S · G · T` vectors of the text encoder's width `D`: for each *slot* (a
//! denoising stage and a group of cross-attention layers) `T` token vectors that replace the
//! placeholder in the prompt. This covers the published arrangements:
//!
//! | method | stages `S` | groups `G` | tokens `T` |
//! |--------|------------|------------|------------|
//! | textual inversion (Gal et al., arXiv:2208.01618) | 1 | single | n |
//! | P+ (Voynov et al., arXiv:2303.09522) | 1 | per layer (16 for SD 1.5) | 1 |
//! | ProSpect (Zhang et al., arXiv:2305.16225) | 10 | single | 1 |
//! | LSAST (Zhang et al., arXiv:2404.11474) | 10 | down / mid / up | 1 |
//!
//! Stage `k` of `S` covers a range of the scheduler's training timesteps; stage 0 holds the
//! least noisy ones (see [`StageMap`]).

use candle_core::{bail, Result};
use easel_diffusion::contexts::{CrossAttentionLayout, LayerGroups};
use serde::{Deserialize, Serialize};

/// Which denoising stage a training timestep falls in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageMap {
    /// `floor(t · S / num_train_timesteps)`, at most `S − 1`: equal stages (ProSpect, LSAST).
    Uniform,
    /// `S − 1` strictly increasing timesteps `b₁ < … < b_{S−1}`: stage `k` holds the
    /// timesteps `t` with `b_k ≤ t < b_{k+1}` (`b₀ = 0`, `b_S = num_train_timesteps`).
    Boundaries(Vec<usize>),
}

/// Which vectors a slot reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotMap {
    /// Each slot its own vectors: slot (stage `k`, group `g`) reads vector `k · G + g` (the
    /// papers' evident intent).
    #[default]
    Separate,
    /// The official LSAST code's overlapping windows: stage `k` reads `cond[k:k+G]`, so slot
    /// (`k`, `g`) reads vector `k + g` (12 of LSAST's 30 vectors are ever used); needed to
    /// paint with the authors' checkpoints.
    Windows,
}

impl SlotMap {
    fn is_separate(&self) -> bool {
        *self == SlotMap::Separate
    }
}

/// A slot of a bank: one denoising stage and one group of cross-attention layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    /// The denoising stage, `0..S` (0: least noisy timesteps).
    pub stage: usize,
    /// The layer group, `0..G` in [`LayerGroups`] order.
    pub group: usize,
}

/// The layout of a bank before the model is known: a preset's `[layout]` table. `PerLayer`
/// needs the model's number of cross-attention layers, supplied by [`LayoutSpec::resolve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutSpec {
    /// Number of denoising stages `S` (at least 1).
    pub stages: usize,
    /// How the cross-attention layers are grouped.
    #[serde(with = "groups_name")]
    pub groups: LayerGroups,
    /// Tokens per slot `T` (at least 1): the placeholder is repeated `T` times in the prompt.
    pub tokens_per_slot: usize,
    /// Stage of a timestep; `uniform` when absent.
    #[serde(default = "uniform")]
    pub stage_map: StageMap,
    /// Which vectors a slot reads; `separate` when absent.
    #[serde(default)]
    pub slot_map: SlotMap,
}

fn uniform() -> StageMap {
    StageMap::Uniform
}

impl LayoutSpec {
    /// The layout for a model with the cross-attention `model` layout (16 layers for SD 1.5):
    /// fixes the number of groups.
    pub fn resolve(&self, model: &CrossAttentionLayout) -> Result<Layout> {
        Layout::new(
            self.stages,
            self.groups,
            self.groups.num_groups(model),
            self.tokens_per_slot,
            self.stage_map.clone(),
        )
        .map(|l| l.with_slot_map(self.slot_map))
    }
}

/// The arrangement of a bank's vectors (`[S, G, T, D]`, see the module docs). Serialised as
/// JSON in bank files, e.g. `{"stages":10,"groups":"down-mid-up","num_groups":3,
/// "tokens_per_slot":1,"stage_map":"uniform"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawLayout", into = "RawLayout")]
pub struct Layout {
    stages: usize,
    groups: LayerGroups,
    num_groups: usize,
    tokens_per_slot: usize,
    stage_map: StageMap,
    slot_map: SlotMap,
}

/// The serialised form of [`Layout`], validated by `Layout::new` on the way in.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayout {
    stages: usize,
    #[serde(with = "groups_name")]
    groups: LayerGroups,
    num_groups: usize,
    tokens_per_slot: usize,
    stage_map: StageMap,
    // Absent in files written before windows existed; not written for `separate`, so those
    // layouts serialise as before.
    #[serde(default, skip_serializing_if = "SlotMap::is_separate")]
    slot_map: SlotMap,
}

impl TryFrom<RawLayout> for Layout {
    type Error = candle_core::Error;

    fn try_from(r: RawLayout) -> Result<Self> {
        Layout::new(
            r.stages,
            r.groups,
            r.num_groups,
            r.tokens_per_slot,
            r.stage_map,
        )
        .map(|l| l.with_slot_map(r.slot_map))
    }
}

impl From<Layout> for RawLayout {
    fn from(l: Layout) -> Self {
        RawLayout {
            stages: l.stages,
            groups: l.groups,
            num_groups: l.num_groups,
            tokens_per_slot: l.tokens_per_slot,
            stage_map: l.stage_map,
            slot_map: l.slot_map,
        }
    }
}

impl Layout {
    /// A checked layout: at least one stage and one token per slot, `num_groups` 1 for
    /// `Single`, 3 for `DownMidUp`, at least 1 for `PerLayer`, and `S − 1` increasing positive
    /// boundaries for [`StageMap::Boundaries`].
    pub fn new(
        stages: usize,
        groups: LayerGroups,
        num_groups: usize,
        tokens_per_slot: usize,
        stage_map: StageMap,
    ) -> Result<Self> {
        if stages == 0 {
            bail!("bank layout: stages must be at least 1")
        }
        if tokens_per_slot == 0 {
            bail!("bank layout: tokens_per_slot must be at least 1")
        }
        let ok = match groups {
            LayerGroups::Single => num_groups == 1,
            LayerGroups::DownMidUp => num_groups == 3,
            LayerGroups::PerLayer => num_groups >= 1,
        };
        if !ok {
            bail!(
                "bank layout: groups {} cannot have {num_groups} groups",
                groups_name::name(groups)
            )
        }
        if let StageMap::Boundaries(b) = &stage_map {
            if b.len() != stages - 1 {
                bail!(
                    "bank layout: {stages} stages need {} stage boundaries, got {} ({b:?})",
                    stages - 1,
                    b.len()
                )
            }
            if b.first() == Some(&0) || b.windows(2).any(|w| w[0] >= w[1]) {
                bail!(
                    "bank layout: stage boundaries {b:?} must be positive and strictly increasing"
                )
            }
        }
        Ok(Self {
            stages,
            groups,
            num_groups,
            tokens_per_slot,
            stage_map,
            slot_map: SlotMap::Separate,
        })
    }

    /// This layout with slots reading their vectors as `slot_map` says.
    pub fn with_slot_map(mut self, slot_map: SlotMap) -> Self {
        self.slot_map = slot_map;
        self
    }

    /// Which vectors a slot reads.
    pub fn slot_map(&self) -> SlotMap {
        self.slot_map
    }

    /// Where the vectors `slot` reads are stored in the `[S, G, T, D]` vectors: the slot itself,
    /// or for [`SlotMap::Windows`] the position of flat index `stage + group`. Fails outside
    /// the layout.
    pub fn storage_slot(&self, slot: Slot) -> Result<Slot> {
        self.slot_index(slot)?;
        Ok(match self.slot_map {
            SlotMap::Separate => slot,
            SlotMap::Windows => {
                // stage + group ≤ S + G − 2 < S · G, since (S − 1)(G − 1) ≥ 0.
                let flat = slot.stage + slot.group;
                Slot {
                    stage: flat / self.num_groups,
                    group: flat % self.num_groups,
                }
            }
        })
    }

    /// Number of denoising stages `S`.
    pub fn stages(&self) -> usize {
        self.stages
    }

    /// The layer grouping.
    pub fn groups(&self) -> LayerGroups {
        self.groups
    }

    /// Number of layer groups `G`.
    pub fn num_groups(&self) -> usize {
        self.num_groups
    }

    /// Tokens per slot `T`.
    pub fn tokens_per_slot(&self) -> usize {
        self.tokens_per_slot
    }

    /// The timestep → stage rule.
    pub fn stage_map(&self) -> &StageMap {
        &self.stage_map
    }

    /// Number of slots `S · G`.
    pub fn num_slots(&self) -> usize {
        self.stages * self.num_groups
    }

    /// Number of vectors `S · G · T`.
    pub fn num_vectors(&self) -> usize {
        self.num_slots() * self.tokens_per_slot
    }

    /// Every slot, stage-major (stage 0 group 0, stage 0 group 1, …).
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        (0..self.stages)
            .flat_map(move |stage| (0..self.num_groups).map(move |group| Slot { stage, group }))
    }

    /// The stage-major index of `slot` (`stage · G + group`); fails outside the layout.
    pub fn slot_index(&self, slot: Slot) -> Result<usize> {
        if slot.stage >= self.stages || slot.group >= self.num_groups {
            bail!(
                "bank slot (stage {}, group {}) is outside the layout ({} stages x {} groups)",
                slot.stage,
                slot.group,
                self.stages,
                self.num_groups
            )
        }
        Ok(slot.stage * self.num_groups + slot.group)
    }

    /// The stage of training timestep `timestep` of `num_train_timesteps` (1000 for SD);
    /// fails for a timestep out of range or boundaries beyond `num_train_timesteps`.
    pub fn stage_of(&self, timestep: usize, num_train_timesteps: usize) -> Result<usize> {
        if timestep >= num_train_timesteps {
            bail!("timestep {timestep} is outside 0..{num_train_timesteps}")
        }
        Ok(match &self.stage_map {
            StageMap::Uniform => {
                (timestep * self.stages / num_train_timesteps).min(self.stages - 1)
            }
            StageMap::Boundaries(b) => {
                if let Some(last) = b.last().filter(|&&l| l >= num_train_timesteps) {
                    bail!(
                        "bank stage boundary {last} is not below num_train_timesteps \
                         {num_train_timesteps}"
                    )
                }
                b.iter().filter(|&&x| x <= timestep).count()
            }
        })
    }

    /// What group `group` feeds: `all` (single), `down` / `mid` / `up`, or `layer <i>`
    /// (per layer, cross-attention layers in forward order).
    pub fn group_name(&self, group: usize) -> String {
        match self.groups {
            LayerGroups::Single => "all".to_string(),
            LayerGroups::DownMidUp => ["down", "mid", "up"][group.min(2)].to_string(),
            LayerGroups::PerLayer => format!("layer {group}"),
        }
    }

    /// Checks that this layout fits a model with the cross-attention `model` layout (a
    /// per-layer bank needs one group per layer).
    pub fn check_model(&self, model: &CrossAttentionLayout) -> Result<()> {
        let needed = self.groups.num_groups(model);
        if needed != self.num_groups {
            bail!(
                "the bank has {} {} groups but the model's {} cross-attention layers need {needed}",
                self.num_groups,
                groups_name::name(self.groups),
                model.total()
            )
        }
        Ok(())
    }
}

/// `LayerGroups` as the strings `single`, `down-mid-up` and `per-layer` in TOML and JSON.
pub(crate) mod groups_name {
    use easel_diffusion::contexts::LayerGroups;
    use serde::{Deserialize, Deserializer, Serializer};

    /// The name of `groups`.
    pub fn name(groups: LayerGroups) -> &'static str {
        match groups {
            LayerGroups::Single => "single",
            LayerGroups::DownMidUp => "down-mid-up",
            LayerGroups::PerLayer => "per-layer",
        }
    }

    pub fn serialize<S: Serializer>(groups: &LayerGroups, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(name(*groups))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LayerGroups, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "single" => Ok(LayerGroups::Single),
            "down-mid-up" => Ok(LayerGroups::DownMidUp),
            "per-layer" => Ok(LayerGroups::PerLayer),
            other => Err(serde::de::Error::custom(format!(
                "unknown layer groups {other:?}: expected \"single\", \"down-mid-up\" or \
                 \"per-layer\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD15: CrossAttentionLayout = CrossAttentionLayout {
        down: 6,
        mid: 1,
        up: 9,
    };

    #[test]
    fn uniform_and_boundary_stages() {
        let l = Layout::new(10, LayerGroups::DownMidUp, 3, 1, StageMap::Uniform).unwrap();
        let cases = [(0, 0), (99, 0), (100, 1), (999, 9), (550, 5)];
        for (t, stage) in cases {
            assert_eq!(l.stage_of(t, 1000).unwrap(), stage, "t = {t}");
        }
        assert!(l.stage_of(1000, 1000).is_err());
        let b = Layout::new(
            3,
            LayerGroups::Single,
            1,
            2,
            StageMap::Boundaries(vec![200, 700]),
        )
        .unwrap();
        let cases = [(0, 0), (199, 0), (200, 1), (699, 1), (700, 2), (999, 2)];
        for (t, stage) in cases {
            assert_eq!(b.stage_of(t, 1000).unwrap(), stage, "t = {t}");
        }
        assert!(b.stage_of(10, 500).is_err());
    }

    #[test]
    fn invalid_layouts_are_refused() {
        let cases = [
            (0, LayerGroups::Single, 1, 1, StageMap::Uniform),
            (1, LayerGroups::Single, 1, 0, StageMap::Uniform),
            (1, LayerGroups::DownMidUp, 2, 1, StageMap::Uniform),
            (1, LayerGroups::PerLayer, 0, 1, StageMap::Uniform),
            (3, LayerGroups::Single, 1, 1, StageMap::Boundaries(vec![10])),
            (
                3,
                LayerGroups::Single,
                1,
                1,
                StageMap::Boundaries(vec![10, 10]),
            ),
            (2, LayerGroups::Single, 1, 1, StageMap::Boundaries(vec![0])),
        ];
        for (s, g, n, t, m) in cases {
            assert!(
                Layout::new(s, g, n, t, m.clone()).is_err(),
                "{s} {g:?} {n} {t} {m:?}"
            );
        }
    }

    #[test]
    fn per_layer_resolves_to_the_model_and_round_trips_json() {
        let spec = LayoutSpec {
            stages: 1,
            groups: LayerGroups::PerLayer,
            tokens_per_slot: 1,
            stage_map: StageMap::Uniform,
            slot_map: SlotMap::Separate,
        };
        let l = spec.resolve(&SD15).unwrap();
        assert_eq!((l.num_groups(), l.num_slots()), (16, 16));
        l.check_model(&SD15).unwrap();
        let small = CrossAttentionLayout {
            down: 2,
            mid: 1,
            up: 3,
        };
        let err = l.check_model(&small).unwrap_err().to_string();
        assert!(
            err.contains("16 per-layer groups") && err.contains("need 6"),
            "{err}"
        );
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(serde_json::from_str::<Layout>(&json).unwrap(), l);
        let bad = json.replace("\"num_groups\":16", "\"num_groups\":0");
        assert!(serde_json::from_str::<Layout>(&bad).is_err());
        assert_eq!(
            l.slot_index(Slot {
                stage: 0,
                group: 15
            })
            .unwrap(),
            15
        );
        assert!(l.slot_index(Slot { stage: 1, group: 0 }).is_err());
    }
}
