//! Golden parity of easel's CLIP text encoder with transformers' `CLIPTextModel`.
//!
//! Fixtures `tests/fixtures/clip_<case>.safetensors` are written by `tools/ref/clip_ref.py`
//! (transformers 5.23, tiny random configs, fixed seeds; see its docstring for the keys). Cases:
//! `quick_gelu` (SD1.x-like: 77 tokens, first-eos pooling, a 3-vector placeholder, keys with the
//! `text_model.` prefix) and `gelu_legacy` (gelu, legacy eos id 2 so argmax pooling, 12 of 20
//! positions, a 1-vector placeholder, transformers 5.x keys without the prefix).
//!
//! Checks (f32, max abs err ≤ 1e-4 unless said): last hidden state, layer −2 hidden state and
//! pooled output on ids; the same with placeholder vectors injected; d(loss)/d(vectors) against
//! torch autograd (relative ≤ 1e-3) with no gradient reaching a model weight; f16 against the
//! f32 reference (loose); input validation. Run with `--nocapture` to see the errors.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use easel_diffusion::clip::{
    replace_token_embeddings, ClipActivation, ClipTextConfig, ClipTextModel, Placeholder,
};

use common::{max_abs, max_abs_diff};

const TOL: f32 = 1e-4;
const CASES: [&str; 2] = ["quick_gelu", "gelu_legacy"];

struct Case {
    name: &'static str,
    tensors: HashMap<String, Tensor>,
    config: ClipTextConfig,
    placeholder: u32,
}

impl Case {
    fn load(name: &'static str) -> Self {
        let tensors = common::load(&format!("clip_{name}.safetensors"));
        let c = tensors["config"].to_vec1::<f64>().unwrap();
        let config = ClipTextConfig {
            vocab_size: c[0] as usize,
            hidden_size: c[1] as usize,
            num_hidden_layers: c[2] as usize,
            num_attention_heads: c[3] as usize,
            intermediate_size: c[4] as usize,
            max_position_embeddings: c[5] as usize,
            eos_token_id: c[6] as u32,
            layer_norm_eps: c[7],
            hidden_act: match c[8] as u32 {
                0 => ClipActivation::QuickGelu,
                1 => ClipActivation::Gelu,
                other => panic!("unknown activation code {other}"),
            },
        };
        Self {
            name,
            tensors,
            config,
            placeholder: c[10] as u32,
        }
    }

    fn get(&self, key: &str) -> Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("{}: fixture has no {key}", self.name))
            .clone()
    }

    fn model(&self, dtype: DType) -> ClipTextModel {
        let vb = VarBuilder::from_tensors(self.tensors.clone(), dtype, &Device::Cpu);
        ClipTextModel::new(vb, &self.config).expect("build model")
    }
}

fn is_weight(key: &str) -> bool {
    let key = key.strip_prefix("text_model.").unwrap_or(key);
    ["embeddings.", "encoder.", "final_layer_norm."]
        .iter()
        .any(|p| key.starts_with(p))
}

fn check(case: &str, what: &str, ours: &Tensor, reference: &Tensor, tol: f32) {
    let err = max_abs_diff(ours, reference);
    println!("{case} {what}: max abs err {err:.2e}");
    assert!(err <= tol, "{case} {what}: max abs err {err} > {tol}");
}

#[test]
fn forward_on_ids_matches_transformers() {
    for name in CASES {
        let case = Case::load(name);
        let model = case.model(DType::F32);
        let ids = case.get("ids");
        let out = model
            .forward_embeds(&model.token_embeddings(&ids).unwrap(), &ids)
            .unwrap();
        check(
            name,
            "last_hidden_state",
            &out.last_hidden_state,
            &case.get("last_hidden_state"),
            TOL,
        );
        check(
            name,
            "penultimate_hidden_state",
            &out.penultimate_hidden_state,
            &case.get("penultimate_hidden_state"),
            TOL,
        );
        check(
            name,
            "pooled_output",
            &out.pooled_output,
            &case.get("pooled_output"),
            TOL,
        );
        // `forward` is the same last hidden state, also with u32 ids.
        let ids_u32 = ids.to_dtype(DType::U32).unwrap();
        let last = model.forward(&ids_u32).unwrap();
        assert_eq!(max_abs_diff(&last, &out.last_hidden_state), 0.0);
    }
}

#[test]
fn injected_embeddings_match_transformers() {
    for name in CASES {
        let case = Case::load(name);
        let model = case.model(DType::F32);
        let ids = case.get("inject_ids");
        let placeholder = Placeholder {
            id: case.placeholder,
            vectors: case.get("vectors"),
        };
        let embeds = model.embed_with_placeholders(&ids, &[placeholder]).unwrap();
        // The same through the lower-level pieces.
        let manual = replace_token_embeddings(
            &model.token_embeddings(&ids).unwrap(),
            &ids,
            case.placeholder,
            &case.get("vectors"),
        )
        .unwrap();
        assert_eq!(max_abs_diff(&embeds, &manual), 0.0);
        let out = model.forward_embeds(&embeds, &ids).unwrap();
        check(
            name,
            "inject last_hidden_state",
            &out.last_hidden_state,
            &case.get("inject_last_hidden_state"),
            TOL,
        );
        check(
            name,
            "inject pooled_output",
            &out.pooled_output,
            &case.get("inject_pooled_output"),
            TOL,
        );
    }
}

#[test]
fn gradient_reaches_vectors_only_and_matches_torch() {
    for name in CASES {
        let case = Case::load(name);
        let model = case.model(DType::F32);
        let ids = case.get("inject_ids");
        let vectors = Var::from_tensor(&case.get("vectors")).unwrap();
        let placeholder = Placeholder {
            id: case.placeholder,
            vectors: vectors.as_tensor().clone(),
        };
        let embeds = model.embed_with_placeholders(&ids, &[placeholder]).unwrap();
        let out = model.forward_embeds(&embeds, &ids).unwrap();
        let loss = (out.last_hidden_state * case.get("grad_weights"))
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let grad = grads
            .get(vectors.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for the vectors"));
        let reference = case.get("grad_vectors");
        let rel = max_abs_diff(grad, &reference) / max_abs(&reference);
        println!("{name} grad vectors: max rel err {rel:.2e}");
        assert!(rel <= 1e-3, "{name}: gradient rel err {rel}");
        // The model holds the fixture's weight tensors themselves (same dtype and device, so
        // no copies): none is a variable and none received a gradient. (candle does store
        // gradients for untracked operands of tracked ops, e.g. `grad_weights` in the loss
        // or a weight's broadcast view, but never for a weight itself.)
        let weights = case.tensors.iter().filter(|(key, _)| is_weight(key));
        assert!(weights.clone().count() > 20);
        for (key, t) in weights {
            assert!(!t.is_variable(), "{name}: {key} is a variable");
            assert!(grads.get(t).is_none(), "{name}: {key} received a gradient");
        }
    }
}

/// candle's CPU backend runs every op used here in f16 (matmul through gemm, unary ops via
/// f32), with softmax and layer-norm statistics in f32 (`crate::ops`).
#[test]
fn f16_is_close_to_f32() {
    for name in CASES {
        let case = Case::load(name);
        let model = case.model(DType::F16);
        let ids = case.get("inject_ids");
        let vectors = case.get("vectors"); // f32 vectors, converted by the replacement
        let embeds = model
            .embed_with_placeholders(
                &ids,
                &[Placeholder {
                    id: case.placeholder,
                    vectors,
                }],
            )
            .unwrap();
        assert_eq!(embeds.dtype(), DType::F16);
        let out = model.forward_embeds(&embeds, &ids).unwrap();
        assert_eq!(out.last_hidden_state.dtype(), DType::F16);
        let reference = case.get("inject_last_hidden_state");
        let rel = max_abs_diff(&out.last_hidden_state, &reference) / max_abs(&reference);
        println!("{name} f16 last_hidden_state: max err / max abs {rel:.2e}");
        assert!(rel <= 2e-2, "{name}: f16 rel err {rel}");
    }
}

#[test]
fn rejects_bad_inputs() {
    let case = Case::load("gelu_legacy");
    let model = case.model(DType::F32);
    let dev = Device::Cpu;
    let max_pos = case.config.max_position_embeddings;
    let ids = |v: Vec<u32>, b: usize| {
        let t = v.len() / b;
        Tensor::from_vec(v, (b, t), &dev).unwrap()
    };
    let ok_embeds = |t: usize| Tensor::zeros((1, t, case.config.hidden_size), DType::F32, &dev);
    type Check<'a> = Box<dyn Fn() -> candle_core::Result<Tensor> + 'a>;
    let cases: Vec<(&str, Check)> = vec![
        (
            "id outside vocabulary",
            Box::new(|| model.forward(&ids(vec![406, 512, 407], 1))),
        ),
        (
            "longer than the position table",
            Box::new(|| model.forward(&ids(vec![1; max_pos + 1], 1))),
        ),
        (
            "ids of rank 1",
            Box::new(|| model.forward(&Tensor::new(&[1u32, 2], &dev)?)),
        ),
        (
            "float ids",
            Box::new(|| model.forward(&Tensor::zeros((1, 3), DType::F32, &dev)?)),
        ),
        (
            "negative id",
            Box::new(|| model.forward(&Tensor::new(&[[406i64, -1, 407]], &dev)?)),
        ),
        (
            "ids shape differs from embeddings",
            Box::new(|| {
                Ok(model
                    .forward_embeds(&ok_embeds(3)?, &ids(vec![1, 2], 1))?
                    .last_hidden_state)
            }),
        ),
        (
            "embeddings of the wrong dtype",
            Box::new(|| {
                Ok(model
                    .forward_embeds(&ok_embeds(3)?.to_dtype(DType::F16)?, &ids(vec![1, 2, 3], 1))?
                    .last_hidden_state)
            }),
        ),
        (
            "vectors of the wrong width",
            Box::new(|| {
                replace_token_embeddings(
                    &ok_embeds(3)?,
                    &ids(vec![1, 300, 3], 1),
                    300,
                    &Tensor::zeros((1, 5), DType::F32, &dev)?,
                )
            }),
        ),
        (
            "no vectors",
            Box::new(|| {
                replace_token_embeddings(
                    &ok_embeds(3)?,
                    &ids(vec![1, 300, 3], 1),
                    300,
                    &Tensor::zeros((0, case.config.hidden_size), DType::F32, &dev)?,
                )
            }),
        ),
    ];
    for (what, run) in cases {
        match run() {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => println!("{what}: {e}"),
        }
    }
    let mut bad = case.config.clone();
    bad.num_attention_heads = 5;
    let vb = VarBuilder::from_tensors(case.tensors.clone(), DType::F32, &dev);
    assert!(ClipTextModel::new(vb, &bad).is_err());
}

/// Multi-vector runs: the k-th placeholder of each run takes vector k % n; other rows stay.
#[test]
fn replacement_follows_runs() {
    let dev = Device::Cpu;
    let embeds = Tensor::zeros((1, 7, 2), DType::F32, &dev).unwrap();
    let ids = Tensor::new(&[[1u32, 9, 9, 9, 2, 9, 9]], &dev).unwrap();
    let vectors = Tensor::new(&[[1f32, 1.], [2., 2.], [3., 3.]], &dev).unwrap();
    let out = replace_token_embeddings(&embeds, &ids, 9, &vectors).unwrap();
    let firsts: Vec<f32> = out
        .squeeze(0)
        .unwrap()
        .narrow(1, 0, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(firsts, [0., 1., 2., 3., 0., 1., 2.]);
    // Ids without the placeholder: unchanged.
    let none = replace_token_embeddings(&embeds, &ids, 5, &vectors).unwrap();
    assert_eq!(max_abs_diff(&none, &embeds), 0.0);
}

#[test]
fn presets_are_consistent() {
    for cfg in [ClipTextConfig::sd15(), ClipTextConfig::tiny()] {
        assert!(cfg.hidden_size.is_multiple_of(cfg.num_attention_heads));
    }
    let sd = ClipTextConfig::sd15();
    assert_eq!(
        (
            sd.vocab_size,
            sd.hidden_size,
            sd.num_hidden_layers,
            sd.max_position_embeddings
        ),
        (49408, 768, 12, 77)
    );
    assert_eq!(Case::load("quick_gelu").config, ClipTextConfig::tiny());
}
