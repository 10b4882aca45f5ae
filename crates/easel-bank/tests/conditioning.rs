//! Bank → CLIP → UNet contexts: routing of slots to stages and layer groups, and gradients
//! from the contexts back to the bank's variables.
//!
//! A tiny random CLIP (width 32, built in `common`, seeded) and the tokenizer fixture
//! `tokenizer_small.json` of easel-diffusion (`tools/ref/tokenizer_ref.py`); the contexts are
//! routed for SD 1.5's 16 cross-attention layers.

mod common;

use candle_core::{Device, Tensor};
use easel_bank::bank::Bank;
use easel_bank::inject::{BankConditioner, ConditionerOptions};
use easel_bank::layout::{LayoutSpec, SlotMap, StageMap};
use easel_bank::params::{BankParams, ParamsSpec};
use easel_bank::preset::Preset;
use easel_diffusion::contexts::{LayerGroups, UNetContexts};

use common::{bank, clip, max_abs_diff, tokenizer, values, SD15};

/// A preset of `spec` and the given layout.
fn preset(stages: usize, groups: LayerGroups, tokens: usize, params: ParamsSpec) -> Preset {
    let mut p = Preset::builtin("lsast").unwrap();
    p.layout = LayoutSpec {
        stages,
        groups,
        tokens_per_slot: tokens,
        stage_map: StageMap::Uniform,
        slot_map: SlotMap::Separate,
    };
    p.params = params;
    p
}

fn conditioner(bank: Bank) -> BankConditioner {
    BankConditioner::new(
        clip(32, 1),
        &tokenizer(),
        bank,
        &SD15,
        &ConditionerOptions::default(),
    )
    .unwrap()
}

/// Per-layer contexts of every stage: `[stage][layer]`.
fn all_contexts(c: &mut BankConditioner) -> Vec<Vec<Tensor>> {
    (0..c.bank().layout().stages())
        .map(|s| {
            let ctx = c.contexts_for_stage(s).unwrap();
            ctx.per_layer(&SD15).unwrap().into_iter().cloned().collect()
        })
        .collect()
}

/// Changing one slot's vectors changes the UNet's context only at the layers of its group, in
/// its stage: exactly equal elsewhere, max abs difference > 1e-3 there. Cases: LSAST-like
/// (3 stages × down/mid/up × 2 tokens), P+-like (2 stages × 16 layers), ProSpect-like
/// (4 stages × single).
#[test]
fn each_slot_routes_to_its_stage_and_layer_group_only() {
    let cases = [
        (3, LayerGroups::DownMidUp, 2),
        (2, LayerGroups::PerLayer, 1),
        (4, LayerGroups::Single, 1),
    ];
    for (stages, groups, tokens) in cases {
        let p = preset(stages, groups, tokens, ParamsSpec::Direct {});
        let mut c = conditioner(bank(&p, &clip(32, 1)));
        let base = all_contexts(&mut c);
        let layout = c.bank().layout().clone();
        let BankParams::Direct(direct) = c.bank().params() else {
            panic!("direct bank expected")
        };
        let var = direct.var().clone();
        let original = var.as_tensor().copy().unwrap();
        for slot in layout.slots() {
            let first = layout.slot_index(slot).unwrap() * tokens;
            let mut v = values(&original);
            let d = 32;
            // Not a constant shift: CLIP's layer norms would cancel that.
            let delta = common::uniform(tokens * d, 7, 0.5);
            for (x, dx) in v[first * d..(first + tokens) * d].iter_mut().zip(delta) {
                *x += dx;
            }
            var.set(&Tensor::from_vec(v, original.dims(), &Device::Cpu).unwrap())
                .unwrap();
            c.clear_cache();
            let changed = all_contexts(&mut c);
            for (stage, layers) in changed.iter().enumerate() {
                for (layer, ctx) in layers.iter().enumerate() {
                    let diff = max_abs_diff(ctx, &base[stage][layer]);
                    let group = groups.group_of(&SD15, layer).unwrap();
                    let hit = stage == slot.stage && group == slot.group;
                    let what = format!("{groups:?} slot {slot:?}: stage {stage} layer {layer}");
                    if hit {
                        assert!(diff > 1e-3, "{what} unchanged ({diff})");
                    } else {
                        assert_eq!(diff, 0.0, "{what} changed");
                    }
                }
            }
            var.set(&original).unwrap();
        }
        // The unconditional context does not depend on the bank.
        assert_eq!(c.uncond().contexts().len(), 1);
    }
}

/// Σ over stages of Σ over the 16 layers' contexts of `context · w` (fixed `w`).
fn loss(c: &BankConditioner, stages: &[usize]) -> Tensor {
    let w = Tensor::from_vec(common::uniform(32, 99, 1.0), 32, &Device::Cpu).unwrap();
    let mut total = Tensor::new(0f32, &Device::Cpu).unwrap();
    for &s in stages {
        let ctx: UNetContexts = c.train_contexts_for_stage(s).unwrap();
        for layer in ctx.per_layer(&SD15).unwrap() {
            let term = layer.broadcast_mul(&w).unwrap().sum_all().unwrap();
            total = (total + term).unwrap();
        }
    }
    total
}

/// Direct banks: every vector gets a non-zero gradient when all stages are in the loss; with
/// one stage in the loss, exactly that stage's vectors do (the others get exactly zero or
/// nothing).
#[test]
fn gradients_reach_the_used_direct_vectors_only() {
    let cases = [
        (3, LayerGroups::DownMidUp, 2),
        (2, LayerGroups::PerLayer, 1),
    ];
    for (stages, groups, tokens) in cases {
        let p = preset(stages, groups, tokens, ParamsSpec::Direct {});
        let c = conditioner(bank(&p, &clip(32, 1)));
        let layout = c.bank().layout().clone();
        let var = c.bank().vars()[0].clone();
        let per_stage = layout.num_groups() * tokens;
        let all: Vec<usize> = (0..stages).collect();
        let grads = loss(&c, &all).backward().unwrap();
        let g = grads
            .get(var.as_tensor())
            .expect("bank vectors have a gradient");
        for (row, r) in g.to_vec2::<f32>().unwrap().iter().enumerate() {
            let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(norm > 0.0, "{groups:?}: vector {row} has no gradient");
        }
        let grads = loss(&c, &[1]).backward().unwrap();
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (row, r) in g.iter().enumerate() {
            let used = row / per_stage == 1;
            let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert_eq!(
                norm > 0.0,
                used,
                "{groups:?}: vector {row} (stage 1 loss): {norm}"
            );
        }
    }
}

/// Generated (LSAST) and implicit (ArtBank) banks: every variable gets a non-zero gradient.
#[test]
fn gradients_reach_every_generator_and_implicit_variable() {
    let specs = [
        ParamsSpec::Generated {
            heads: 4,
            mlp_ratio: 2,
        },
        ParamsSpec::Implicit { entries: 5 },
    ];
    for spec in specs {
        let p = preset(2, LayerGroups::DownMidUp, 1, spec.clone());
        let c = conditioner(bank(&p, &clip(32, 1)));
        let grads = loss(&c, &[0, 1]).backward().unwrap();
        let vars = c.bank().params().vars();
        assert!(vars.len() >= 3, "{spec:?}");
        for (name, var) in vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{spec:?}: {name} has no gradient"));
            let max = values(g).iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(max > 0.0, "{spec:?}: {name} has a zero gradient");
        }
    }
}

/// Inference contexts are cached per stage, equal to the training path's values, and follow
/// the timestep → stage map; a template that cannot hold the tokens is refused.
#[test]
fn cached_contexts_match_the_training_path() {
    let p = preset(10, LayerGroups::DownMidUp, 1, ParamsSpec::Direct {});
    let mut c = conditioner(bank(&p, &clip(32, 1)));
    assert_eq!(c.stage_of(999).unwrap(), 9);
    assert_eq!(c.stage_of(0).unwrap(), 0);
    let cached = c.contexts_for_timestep(450).unwrap();
    let train = c.train_contexts_for_stage(4).unwrap();
    for (a, b) in cached.contexts().iter().zip(train.contexts()) {
        assert_eq!(max_abs_diff(a, b), 0.0);
    }
    assert!(c.contexts_for_stage(10).is_err());
    let long = "word ".repeat(80) + "{}";
    let options = ConditionerOptions {
        template: Some(long),
        ..ConditionerOptions::default()
    };
    let err = BankConditioner::new(
        clip(32, 1),
        &tokenizer(),
        bank(&p, &clip(32, 1)),
        &SD15,
        &options,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("shorten the template"), "{err}");
    // A bank of another width is refused.
    let err = BankConditioner::new(
        clip(64, 1),
        &tokenizer(),
        bank(&p, &clip(32, 1)),
        &SD15,
        &ConditionerOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("32-d") && err.contains("64-d"), "{err}");
}
