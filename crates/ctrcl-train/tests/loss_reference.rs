//! Every loss (the semi-supervised ones of METHOD.md §9 too) against independent NumPy float64 values from `scripts/reference/losses.py`
//! (inputs and expected outputs in `tests/data/loss_reference.json`).
//!
//! Tolerance: 1e-4 absolute. Burn computes in float32; with logits of magnitude ≲ 8 the log-sum-exp
//! and the sums over 32–128 terms lose at most ~1e-6 relative, so 1e-4 leaves two orders of
//! margin while still catching any wrong term (the smallest difference between two of the
//! reference values, rlcl_none vs rlcl_alignment_only, is 0.04).

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use ctrcl_train::config::{PixelWeight, Rectify, RlclConfig};
use ctrcl_train::losses::baselines::{cross_teaching_loss, kd_loss, kdcl_loss};
use ctrcl_train::losses::cfcl::{
    alignment_loss, alignment_loss_weighted, area_downsample, cell_weights, perceive,
    perception_loss, perception_loss_weighted,
};
use ctrcl_train::losses::pseudo::{pseudo_labels, PseudoLabels};
use ctrcl_train::losses::rlcl::{dml_loss, rectify, rlcl_loss, rlcl_loss_masked};
use ctrcl_train::losses::seg::{cross_entropy, dice_loss, seg_loss};
use serde_json::Value;

type B = Flex;
const TOL: f64 = 1e-4;

struct Fixture {
    json: Value,
    shape: [usize; 4],
}

impl Fixture {
    fn load() -> Self {
        let text = include_str!("data/loss_reference.json");
        let json: Value = serde_json::from_str(text).unwrap();
        let s: Vec<usize> = json["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        Fixture {
            json,
            shape: [s[0], s[1], s[2], s[3]],
        }
    }

    fn floats(&self, v: &Value) -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }

    fn tensor4<BB: Backend>(&self, key: &str, shape: [usize; 4]) -> Tensor<BB, 4> {
        let data = self.floats(&self.json[key]);
        Tensor::from_data(TensorData::new(data, shape), &Default::default())
    }

    fn logits<BB: Backend>(&self, key: &str) -> Tensor<BB, 4> {
        self.tensor4(key, self.shape)
    }

    fn onehot<BB: Backend>(&self) -> Tensor<BB, 4> {
        let [b, k, h, w] = self.shape;
        let labels: Vec<usize> = self.json["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let mut data = vec![0f32; b * k * h * w];
        for (i, &c) in labels.iter().enumerate() {
            let (n, p) = (i / (h * w), i % (h * w));
            data[(n * k + c) * h * w + p] = 1.0;
        }
        Tensor::from_data(TensorData::new(data, self.shape), &Default::default())
    }

    /// A projected feature map of the CFCL fixture, `[B, d, H/stride, W/stride]`.
    fn cfcl_features<BB: Backend>(&self, key: &str) -> Tensor<BB, 4> {
        let c = &self.json["cfcl"];
        let d = c["dim"].as_u64().unwrap() as usize;
        let stride = self.cfcl_stride();
        let [b, _, h, w] = self.shape;
        Tensor::from_data(
            TensorData::new(self.floats(&c[key]), [b, d, h / stride, w / stride]),
            &Default::default(),
        )
    }

    fn cfcl_stride(&self) -> usize {
        self.json["cfcl"]["stride"].as_u64().unwrap() as usize
    }

    fn expect(&self, key: &str) -> f64 {
        self.json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no {key}"))
    }
}

fn value<BB: Backend>(t: Tensor<BB, 1>) -> f64 {
    t.into_scalar().elem::<f64>()
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= TOL,
        "{what}: got {got}, reference {want}"
    );
}

#[test]
fn supervised_loss_matches_reference() {
    let f = Fixture::load();
    let z = f.logits::<B>("z_a");
    close(
        value(cross_entropy(z.clone(), f.onehot())),
        f.expect("ce_a"),
        "CE",
    );
    let probs = burn::tensor::activation::softmax(z.clone(), 1);
    close(
        value(dice_loss(probs, f.onehot())),
        f.expect("dice_a"),
        "Dice",
    );
    close(
        value(seg_loss(z, f.onehot(), 0.4, 0.6).total),
        f.expect("seg_a_04_06"),
        "L_seg 0.4/0.6",
    );
    // The training backend computes CE and Dice in one fused op (losses/seg_cpu.rs).
    let terms = seg_loss(
        f.logits::<Autodiff<B>>("z_a"),
        f.onehot::<Autodiff<B>>(),
        0.4,
        0.6,
    );
    close(value(terms.ce), f.expect("ce_a"), "fused CE");
    close(value(terms.dice), f.expect("dice_a"), "fused Dice");
    close(
        value(terms.total),
        f.expect("seg_a_04_06"),
        "fused L_seg 0.4/0.6",
    );
}

#[test]
fn rlcl_matches_reference_in_every_mode() {
    let f = Fixture::load();
    let base = RlclConfig::default();
    let cases = [
        ("rlcl_adaptive", base.clone()),
        (
            "rlcl_hard",
            RlclConfig {
                rectify: Rectify::Hard,
                ..base.clone()
            },
        ),
        (
            "rlcl_none",
            RlclConfig {
                rectify: Rectify::None,
                ..base.clone()
            },
        ),
        (
            "rlcl_tau2",
            RlclConfig {
                temperature: 2.0,
                ..base.clone()
            },
        ),
        (
            "rlcl_alignment_only",
            RlclConfig {
                alignment_weight: 1.0,
                similarity_weight: 0.0,
                certainty_weight: 0.0,
                ..base.clone()
            },
        ),
        (
            "rlcl_certainty_weighted",
            RlclConfig {
                pixel_weight: PixelWeight::Certainty,
                ..base.clone()
            },
        ),
    ];
    for (key, cfg) in cases {
        let got = value(rlcl_loss(
            f.logits::<B>("z_a"),
            f.logits("z_b"),
            f.onehot(),
            &cfg,
        ));
        close(got, f.expect(key), key);
        // The training backend runs the fused CPU op (losses/rlcl_cpu.rs): same reference.
        let fused = rlcl_loss(
            f.logits::<Autodiff<B>>("z_a"),
            f.logits("z_b"),
            f.onehot(),
            &cfg,
        );
        close(
            value(fused.inner()),
            f.expect(key),
            &format!("{key} (fused)"),
        );
    }
    // DML is the unrectified transfer at τ = 1.
    close(
        value(dml_loss(f.logits::<B>("z_a"), f.logits("z_b"))),
        f.expect("dml_b_from_a"),
        "DML",
    );
    // KD: at τ = 1 it is DML's term; at τ = 2, Hinton's τ²-scaled KL.
    close(
        value(kd_loss(f.logits::<B>("z_a"), f.logits("z_b"), 1.0)),
        f.expect("dml_b_from_a"),
        "KD at τ = 1",
    );
    close(
        value(kd_loss(f.logits::<B>("z_a"), f.logits("z_b"), 2.0)),
        f.expect("kd_b_from_a_tau2"),
        "KD at τ = 2",
    );
    // KDCL: student b distils the ensemble of a and b; cross teaching: b against argmax of a.
    close(
        value(kdcl_loss(f.logits::<B>("z_b"), f.logits("z_a"), 1.0)),
        f.expect("kdcl_b"),
        "KDCL",
    );
    close(
        value(kdcl_loss(f.logits::<B>("z_b"), f.logits("z_a"), 2.0)),
        f.expect("kdcl_b_tau2"),
        "KDCL at τ = 2",
    );
    close(
        value(cross_teaching_loss(f.logits::<B>("z_b"), f.logits("z_a"))),
        f.expect("cross_teaching_b_from_a"),
        "cross teaching",
    );
    // The training backend runs DML, KD and KDCL as the fused distillation op
    // (losses/rlcl_cpu.rs): same references.
    type AD = Autodiff<B>;
    let z = |key: &str| f.logits::<AD>(key);
    let fused = [
        (dml_loss(z("z_a"), z("z_b")), "dml_b_from_a"),
        (kd_loss(z("z_a"), z("z_b"), 2.0), "kd_b_from_a_tau2"),
        (kdcl_loss(z("z_b"), z("z_a"), 1.0), "kdcl_b"),
        (kdcl_loss(z("z_b"), z("z_a"), 2.0), "kdcl_b_tau2"),
    ];
    for (loss, key) in fused {
        close(
            value(loss.inner()),
            f.expect(key),
            &format!("{key} (fused)"),
        );
    }
}

#[test]
fn arm_lambda_map_matches_reference() {
    let f = Fixture::load();
    let pa = burn::tensor::activation::softmax(f.logits::<B>("z_a"), 1);
    let pb = burn::tensor::activation::softmax(f.logits::<B>("z_b"), 1);
    let r = rectify(pa, pb, f.onehot(), &RlclConfig::default());
    let got: Vec<f32> = r.lambda.into_data().to_vec().unwrap();
    let want = f.floats(&f.json["rlcl_lambda"]);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= TOL as f32,
            "λ at pixel {i}: got {g}, reference {w}"
        );
    }
    assert!(
        want.iter().any(|&l| l > 0.0) && want.contains(&0.0),
        "fixture has both kinds"
    );
}

#[test]
fn cfcl_matches_reference() {
    let f = Fixture::load();
    let c = &f.json["cfcl"];
    let stride = f.cfcl_stride();
    let feat = |key: &str| f.cfcl_features::<B>(key);
    let fractions = area_downsample(f.onehot::<B>(), stride);
    let pa = perceive(feat("f_a"), fractions.clone(), 0.1);
    let pb = perceive(feat("f_b"), fractions.clone(), 0.1);
    close(
        value(perception_loss(&pa, fractions.clone())),
        c["cp_a"].as_f64().unwrap(),
        "L_cp(A)",
    );
    close(
        value(perception_loss(&pb, fractions)),
        c["cp_b"].as_f64().unwrap(),
        "L_cp(B)",
    );
    close(
        value(alignment_loss(&pa, &pb)),
        c["al_a_to_b"].as_f64().unwrap(),
        "L_al(A→B)",
    );
}

#[test]
fn cfcl_gradients_are_finite_with_an_absent_class() {
    // The fixture's batch has no pixel of class 3, so its prototype is an all-zero vector.
    type AD = Autodiff<Flex>;
    let f = Fixture::load();
    let stride = f.cfcl_stride();
    let feat = |key: &str| f.cfcl_features::<AD>(key).require_grad();
    let (fa, fb) = (feat("f_a"), feat("f_b"));
    let fractions = area_downsample(f.onehot::<AD>(), stride);
    let pa = perceive(fa.clone(), fractions.clone(), 0.1);
    let pb = perceive(fb.clone(), fractions.clone(), 0.1);
    let loss = perception_loss(&pb, fractions) + alignment_loss(&pa, &pb);
    let grads = loss.backward();
    let g: Vec<f32> = fb.grad(&grads).unwrap().into_data().to_vec().unwrap();
    assert!(g.iter().all(|v| v.is_finite()), "non-finite gradient");
    assert!(g.iter().any(|v| v.abs() > 0.0));
}

#[test]
fn transfer_terms_send_no_gradient_to_the_teacher() {
    type AD = Autodiff<Flex>;
    let f = Fixture::load();
    let teacher = f.logits::<AD>("z_a").require_grad();
    let student = f.logits::<AD>("z_b").require_grad();
    let loss = rlcl_loss(
        teacher.clone(),
        student.clone(),
        f.onehot(),
        &RlclConfig::default(),
    ) + dml_loss(teacher.clone(), student.clone());
    let grads = loss.backward();
    let teacher_grad = teacher
        .grad(&grads)
        .map(|g| g.abs().sum().into_scalar())
        .unwrap_or(0.0);
    let student_grad = student.grad(&grads).unwrap().abs().sum().into_scalar();
    assert_eq!(teacher_grad, 0.0);
    assert!(student_grad > 0.0);
}

/// The fixture's logits read as an unlabelled batch (METHOD.md §9): the pair's pseudo-labels
/// and trust mask at τ_u = 0.45 (17 of 32 pixels trusted in the fixture).
fn pseudo<BB: Backend>(f: &Fixture) -> PseudoLabels<BB> {
    let threshold = f.json["semi"]["threshold"].as_f64().unwrap();
    pseudo_labels(f.logits::<BB>("z_a"), f.logits::<BB>("z_b"), threshold)
}

#[test]
fn pseudo_labels_and_trust_match_reference() {
    let f = Fixture::load();
    let s = &f.json["semi"];
    let p = pseudo::<B>(&f);
    // Compared as exact 0/1 values: the fixture's mean probabilities are at least 8.8e-4 from
    // τ_u (scripts/reference/losses.py), far beyond float32 rounding (~1e-7).
    let labels: Vec<i64> = p
        .onehot
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    let want: Vec<i64> = s["pseudo_labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(labels, want);
    let mask: Vec<f32> = p.mask.into_data().to_vec().unwrap();
    assert_eq!(mask, f.floats(&s["trusted"]));
    assert!(mask.contains(&0.0) && mask.contains(&1.0), "both kinds");
}

#[test]
fn trusted_rlcl_matches_reference() {
    let f = Fixture::load();
    let s = &f.json["semi"];
    let p = pseudo::<B>(&f);
    let run = |cfg: &RlclConfig| {
        value(rlcl_loss_masked(
            f.logits::<B>("z_a"),
            f.logits::<B>("z_b"),
            p.onehot.clone(),
            p.mask.clone(),
            cfg,
        ))
    };
    let base = RlclConfig::default();
    close(
        run(&base),
        s["rlcl_b_from_a"].as_f64().unwrap(),
        "trusted RLCL",
    );
    close(
        run(&RlclConfig {
            pixel_weight: PixelWeight::Certainty,
            ..base.clone()
        }),
        s["rlcl_b_from_a_certainty"].as_f64().unwrap(),
        "trusted RLCL, certainty weights",
    );
    close(
        run(&RlclConfig {
            temperature: 2.0,
            ..base.clone()
        }),
        s["rlcl_b_from_a_tau2"].as_f64().unwrap(),
        "trusted RLCL, τ = 2",
    );
    // With every pixel trusted and the ground truth for pseudo-label it is supervised RLCL.
    let ones = Tensor::<B, 4>::ones([2, 1, 4, 4], &Default::default());
    let all = rlcl_loss_masked(f.logits("z_a"), f.logits("z_b"), f.onehot(), ones, &base);
    close(value(all), f.expect("rlcl_adaptive"), "mask of ones");
}

#[test]
fn trusted_cfcl_matches_reference() {
    let f = Fixture::load();
    let s = &f.json["semi"];
    let stride = f.cfcl_stride();
    let feat = |key: &str| f.cfcl_features::<B>(key);
    let p = pseudo::<B>(&f);
    let fractions = area_downsample(p.onehot * p.mask, stride);
    let weights = cell_weights(fractions.clone());
    let got: Vec<f32> = weights.clone().into_data().to_vec().unwrap();
    let want = f.floats(&s["cell_weights"]);
    assert!(
        got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6),
        "{got:?} vs {want:?}"
    );
    let pa = perceive(feat("f_a"), fractions.clone(), 0.1);
    let pb = perceive(feat("f_b"), fractions.clone(), 0.1);
    close(
        value(perception_loss_weighted(
            &pa,
            fractions.clone(),
            weights.clone(),
        )),
        s["cp_a"].as_f64().unwrap(),
        "trusted L_cp(A)",
    );
    close(
        value(perception_loss_weighted(&pb, fractions, weights.clone())),
        s["cp_b"].as_f64().unwrap(),
        "trusted L_cp(B)",
    );
    close(
        value(alignment_loss_weighted(&pa, &pb, weights)),
        s["al_a_to_b"].as_f64().unwrap(),
        "trusted L_al(A→B)",
    );
}

/// Gradient isolation of the unlabelled terms: the pseudo-labels carry no gradient to either
/// student, the teacher side of trusted RLCL none to the teacher, and the student receives
/// gradient on trusted pixels only.
#[test]
fn trusted_rlcl_teaches_only_the_student_on_trusted_pixels() {
    type AD = Autodiff<Flex>;
    let f = Fixture::load();
    let teacher = f.logits::<AD>("z_a").require_grad();
    let student = f.logits::<AD>("z_b").require_grad();
    let p = pseudo_labels(teacher.clone(), student.clone(), 0.45);
    let mask: Vec<f32> = p.mask.clone().into_data().to_vec().unwrap();
    let loss = rlcl_loss_masked(
        teacher.clone(),
        student.clone(),
        p.onehot,
        p.mask,
        &RlclConfig::default(),
    );
    let grads = loss.backward();
    assert!(
        teacher
            .grad(&grads)
            .is_none_or(|g| g.abs().sum().into_scalar() == 0.0),
        "the teacher and the pseudo-labels are detached"
    );
    let g: Vec<f32> = student.grad(&grads).unwrap().into_data().to_vec().unwrap();
    let [b, k, h, w] = f.shape;
    for n in 0..b {
        for px in 0..h * w {
            let g_px: f32 = (0..k).map(|c| g[(n * k + c) * h * w + px].abs()).sum();
            if mask[n * h * w + px] == 0.0 {
                assert_eq!(g_px, 0.0, "untrusted pixel {n}/{px} got gradient");
            }
        }
    }
    assert!(g.iter().any(|v| v.abs() > 0.0));
}
