//! ctrcl-models: the segmentation students (METHOD.md §2), generic over Burn's `Backend`.
//!
//! Every student returns full-resolution logits and its decoder feature taps keyed by stride
//! (8 means 1/8 of the input size), which the feature-wise transfer (CFCL) aligns.

pub mod batchnorm;
pub mod cpu;
pub mod export;
pub mod import;
pub mod ops;
pub mod precision;
pub mod resunet;
pub mod segformer;
pub mod swin;
pub mod swin_unet;
pub mod switches;
pub mod unet;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use import::ImportReport;
pub use resunet::{ResUnet, ResUnetConfig};
pub use segformer::{SegFormer, SegFormerConfig};
pub use swin_unet::{SwinUnet, SwinUnetConfig};
pub use unet::{UNet, UNetConfig};

/// Runs `f` on a rayon pool of exactly `threads` threads (its parallel ops split across them):
/// how the tests check that a kernel gives the same bits on any thread count.
pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon thread pool")
        .install(f)
}

/// A model configuration problem, with the offending key in the message.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Config(String),
}

/// What a student returns.
pub struct SegOutput<B: Backend> {
    /// `[B, K, H, W]`, same size as the input.
    pub logits: Tensor<B, 4>,
    /// `(stride, [B, C_l, H/stride, W/stride])`, deepest first.
    pub features: Vec<(usize, Tensor<B, 4>)>,
}

impl<B: Backend> SegOutput<B> {
    /// The feature map at `stride`, if this student taps it.
    pub fn feature(&self, stride: usize) -> Option<Tensor<B, 4>> {
        self.features
            .iter()
            .find(|(s, _)| *s == stride)
            .map(|(_, f)| f.clone())
    }
}

/// Which architecture a student uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    Unet,
    /// ResNet-34-style encoder U-Net.
    Resunet,
    SwinUnet,
    /// SegFormer (Mix-Transformer encoder, all-MLP decoder).
    Segformer,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Unet => "unet",
            Architecture::Resunet => "resunet",
            Architecture::SwinUnet => "swin-unet",
            Architecture::Segformer => "segformer",
        }
    }
}

/// Sizes of every architecture; a student uses the section of its own.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSizes {
    pub unet: UNetConfig,
    pub resunet: ResUnetConfig,
    pub swin_unet: SwinUnetConfig,
    pub segformer: SegFormerConfig,
}

/// A student network of either family, so both students share one Rust type.
// Two students exist per run, so the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Student<B: Backend> {
    Unet(UNet<B>),
    Resunet(ResUnet<B>),
    SwinUnet(SwinUnet<B>),
    Segformer(SegFormer<B>),
}

impl ModelSizes {
    /// Validates the sizes of `arch` for inputs of `image_size` and `in_channels`.
    pub fn validate(
        &self,
        arch: Architecture,
        image_size: usize,
        in_channels: usize,
    ) -> Result<(), ModelError> {
        match arch {
            Architecture::Unet => self.unet.validate(image_size),
            Architecture::Resunet => self.resunet.validate(image_size),
            Architecture::Segformer => self.segformer.validate(image_size),
            Architecture::SwinUnet => {
                if in_channels != 1 && in_channels != 3 {
                    return Err(ModelError::Config(format!(
                        "swin-unet takes 1- or 3-channel inputs, got {in_channels}"
                    )));
                }
                self.swin_unet.validate(image_size)
            }
        }
    }

    /// Builds a student (validate first).
    pub fn init<B: Backend>(
        &self,
        arch: Architecture,
        image_size: usize,
        in_channels: usize,
        num_classes: usize,
        device: &B::Device,
    ) -> Student<B> {
        match arch {
            Architecture::Unet => Student::Unet(self.unet.init(in_channels, num_classes, device)),
            Architecture::Resunet => {
                Student::Resunet(self.resunet.init(in_channels, num_classes, device))
            }
            Architecture::Segformer => {
                Student::Segformer(self.segformer.init(in_channels, num_classes, device))
            }
            Architecture::SwinUnet => {
                Student::SwinUnet(
                    self.swin_unet
                        .init(image_size, in_channels, num_classes, device),
                )
            }
        }
    }

    /// Multiply-adds of one forward pass of one `image_size²` image (convolutions, linear layers,
    /// attention products; normalisation, activations and softmax are not counted).
    pub fn forward_macs(
        &self,
        arch: Architecture,
        image_size: usize,
        in_channels: usize,
        num_classes: usize,
    ) -> f64 {
        match arch {
            Architecture::Unet => self.unet.forward_macs(image_size, in_channels, num_classes),
            Architecture::Resunet => {
                self.resunet
                    .forward_macs(image_size, in_channels, num_classes)
            }
            Architecture::Segformer => {
                self.segformer
                    .forward_macs(image_size, in_channels, num_classes)
            }
            Architecture::SwinUnet => self.swin_unet.forward_macs(image_size, num_classes),
        }
    }

    /// `(stride, channels)` of the feature taps of `arch`.
    pub fn tap_channels(&self, arch: Architecture) -> Vec<(usize, usize)> {
        match arch {
            Architecture::Unet => self.unet.tap_channels(),
            Architecture::Resunet => self.resunet.tap_channels(),
            Architecture::Segformer => self.segformer.tap_channels(),
            Architecture::SwinUnet => self.swin_unet.tap_channels(),
        }
    }
}

impl<B: Backend> Student<B> {
    /// The architecture of this network.
    pub fn architecture(&self) -> Architecture {
        match self {
            Student::Unet(_) => Architecture::Unet,
            Student::Resunet(_) => Architecture::Resunet,
            Student::SwinUnet(_) => Architecture::SwinUnet,
            Student::Segformer(_) => Architecture::Segformer,
        }
    }

    /// The architecture a saved record holds (loading it into another one would panic in Burn's
    /// derived `load_record`).
    pub fn record_architecture(record: &StudentRecord<B>) -> Architecture {
        match record {
            StudentRecord::Unet(_) => Architecture::Unet,
            StudentRecord::Resunet(_) => Architecture::Resunet,
            StudentRecord::SwinUnet(_) => Architecture::SwinUnet,
            StudentRecord::Segformer(_) => Architecture::Segformer,
        }
    }

    /// # Shapes
    /// `x`: `[B, Cin, H, W]` → logits `[B, K, H, W]` and the feature taps.
    pub fn forward(&self, x: Tensor<B, 4>) -> SegOutput<B> {
        match self {
            Student::Unet(m) => m.forward(x),
            Student::Resunet(m) => m.forward(x),
            Student::Segformer(m) => m.forward(x),
            Student::SwinUnet(m) => m.forward(x),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_backend {
    pub type TestBackend = burn::backend::Flex;
    pub type TestAutodiff = burn::backend::Autodiff<TestBackend>;

    /// Asserts that `fast` and `reference` give bit-identical values and input gradients on
    /// `x0` (autodiff CPU backend).
    pub fn assert_same_values_and_gradients<const D: usize, const E: usize>(
        x0: &burn::tensor::Tensor<TestAutodiff, D>,
        fast: impl Fn(burn::tensor::Tensor<TestAutodiff, D>) -> burn::tensor::Tensor<TestAutodiff, E>,
        reference: impl Fn(
            burn::tensor::Tensor<TestAutodiff, D>,
        ) -> burn::tensor::Tensor<TestAutodiff, E>,
    ) {
        assert_values_and_gradients_match(
            x0,
            fast,
            reference,
            burn::tensor::Tolerance::absolute(0.0),
        );
    }

    /// Asserts that `fast` and `reference` give the same values and input gradients on `x0`
    /// within `tol` (autodiff CPU backend); the gradient is taken of `Σ y·sin(k)` over the
    /// flat index `k`, so that every output element carries its own weight.
    pub fn assert_values_and_gradients_match<const D: usize, const E: usize>(
        x0: &burn::tensor::Tensor<TestAutodiff, D>,
        fast: impl Fn(burn::tensor::Tensor<TestAutodiff, D>) -> burn::tensor::Tensor<TestAutodiff, E>,
        reference: impl Fn(
            burn::tensor::Tensor<TestAutodiff, D>,
        ) -> burn::tensor::Tensor<TestAutodiff, E>,
        tol: burn::tensor::Tolerance<f32>,
    ) {
        use burn::tensor::{Int, Tensor};
        let run = |op: &dyn Fn(Tensor<TestAutodiff, D>) -> Tensor<TestAutodiff, E>| {
            let x = x0.clone().detach().require_grad();
            let y = op(x.clone());
            let n = y.shape().num_elements() as i64;
            let w = Tensor::<TestAutodiff, 1, Int>::arange(0..n, &y.device())
                .float()
                .reshape(y.dims())
                .sin();
            let grads = (y.clone() * w).sum().backward();
            (y.inner(), x.grad(&grads).unwrap())
        };
        let ((y_fast, g_fast), (y_ref, g_ref)) = (run(&fast), run(&reference));
        assert_eq!(y_fast.dims(), y_ref.dims());
        y_fast
            .into_data()
            .assert_approx_eq::<f32>(&y_ref.into_data(), tol);
        g_fast
            .into_data()
            .assert_approx_eq::<f32>(&g_ref.into_data(), tol);
    }

    /// Small students for fast tests (U-Net [4..16], Swin-UNet embed 12, window 4).
    pub fn small_sizes() -> crate::ModelSizes {
        crate::ModelSizes {
            unet: crate::UNetConfig {
                channels: [4, 8, 8, 16, 16],
                ..Default::default()
            },
            swin_unet: crate::SwinUnetConfig {
                embed_dim: 12,
                heads: [1, 2, 3, 6],
                window: 4,
                depths: [2, 2, 2, 2],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A PyTorch-made weight fixture's JSON (`tests/data/NAME.json`, see `scripts/reference/`).
    pub struct Fixture(pub serde_json::Value);

    impl Fixture {
        pub fn load(name: &str) -> Self {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data")
                .join(format!("{name}.json"));
            Fixture(serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap())
        }

        pub fn int(&self, key: &str) -> usize {
            self.0[key].as_u64().unwrap() as usize
        }

        pub fn ints(&self, key: &str) -> Vec<usize> {
            let values = self.0[key].as_array().unwrap();
            values
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect()
        }

        pub fn floats(&self, key: &str) -> Vec<f32> {
            let values = self.0[key].as_array().unwrap();
            values.iter().map(|v| v.as_f64().unwrap() as f32).collect()
        }

        /// Number of tensors the fixture's checkpoint holds.
        pub fn keys(&self) -> usize {
            self.0["keys"].as_array().unwrap().len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::{small_sizes, TestAutodiff};
    use burn::tensor::Distribution;

    #[test]
    fn unet_macs_by_hand() {
        // Widths 1, 16×16 input, 1 class. Encoder: 9·(1·1 + 1·1) per pixel at areas 256, 64, 16,
        // 4, 1 → 18·341 = 6138. Decoder at areas 64…1 below: up-conv 1 + block 9·(2 + 1) = 28
        // per output pixel at areas 4, 16, 64, 256 → 28·340 = 9520. Head: 256. Total 15914.
        let sizes = ModelSizes {
            unet: UNetConfig {
                channels: [1; 5],
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(sizes.forward_macs(Architecture::Unet, 16, 1, 1), 15914.0);
    }

    #[test]
    fn resunet_shapes_taps_and_gradients() {
        let sizes = ModelSizes {
            resunet: ResUnetConfig {
                channels: [4, 4, 8, 8, 16],
                blocks: [1, 2, 1, 1],
                decoder: [16, 12, 8, 6, 4],
                ..Default::default()
            },
            ..Default::default()
        };
        let device = Default::default();
        let m = sizes.init::<TestAutodiff>(Architecture::Resunet, 64, 1, 3, &device);
        let x = Tensor::random([2, 1, 64, 64], Distribution::Default, &device).require_grad();
        let out = m.forward(x.clone());
        assert_eq!(out.logits.dims(), [2, 3, 64, 64]);
        let taps: Vec<_> = out.features.iter().map(|(s, f)| (*s, f.dims())).collect();
        assert_eq!(
            taps,
            vec![(8, [2, 12, 8, 8]), (4, [2, 8, 16, 16]), (2, [2, 6, 32, 32])]
        );
        let channels: Vec<_> = taps.iter().map(|(s, d)| (*s, d[1])).collect();
        assert_eq!(channels, sizes.tap_channels(Architecture::Resunet));
        // Every input pixel reaches the output (skips and stem included).
        let grads = out.logits.sum().backward();
        let g = x.grad(&grads).unwrap();
        assert_eq!(
            g.abs().greater_elem(0.0).int().sum().into_scalar(),
            2 * 64 * 64
        );
        assert!(
            sizes.validate(Architecture::Resunet, 48, 1).is_err(),
            "48 is not a multiple of 32"
        );
    }

    #[test]
    fn segformer_shapes_taps_and_gradients() {
        let sizes = ModelSizes {
            segformer: SegFormerConfig {
                dims: [8, 16, 16, 32],
                heads: [1, 2, 2, 4],
                sr_ratios: [4, 2, 1, 1],
                decoder_dim: 16,
                ..Default::default()
            },
            ..Default::default()
        };
        let device = Default::default();
        let m = sizes.init::<TestAutodiff>(Architecture::Segformer, 64, 1, 3, &device);
        let x = Tensor::random([2, 1, 64, 64], Distribution::Default, &device).require_grad();
        let out = m.forward(x.clone());
        assert_eq!(out.logits.dims(), [2, 3, 64, 64]);
        let taps: Vec<_> = out.features.iter().map(|(s, f)| (*s, f.dims())).collect();
        assert_eq!(
            taps,
            vec![
                (16, [2, 16, 4, 4]),
                (8, [2, 16, 8, 8]),
                (4, [2, 16, 16, 16])
            ]
        );
        let channels: Vec<_> = taps.iter().map(|(s, d)| (*s, d[1])).collect();
        assert_eq!(channels, sizes.tap_channels(Architecture::Segformer));
        // The overlapping 7×7 stride-4 embedding reaches every input pixel.
        let grads = out.logits.sum().backward();
        let g = x.grad(&grads).unwrap();
        assert_eq!(
            g.abs().greater_elem(0.0).int().sum().into_scalar(),
            2 * 64 * 64
        );
        assert!(sizes.validate(Architecture::Segformer, 64, 1).is_ok());
        assert!(sizes.validate(Architecture::Segformer, 48, 1).is_err());
        // A spatial reduction that does not divide its stage grid (16 at 64 pixels) is refused.
        let mut odd = sizes.clone();
        odd.segformer.sr_ratios = [3, 2, 1, 1];
        assert!(odd.validate(Architecture::Segformer, 64, 1).is_err());
    }

    #[test]
    fn unet_shapes_and_taps() {
        let sizes = small_sizes();
        let device = Default::default();
        let m = sizes.init::<TestAutodiff>(Architecture::Unet, 32, 1, 4, &device);
        let out = m.forward(Tensor::random(
            [2, 1, 32, 32],
            Distribution::Default,
            &device,
        ));
        assert_eq!(out.logits.dims(), [2, 4, 32, 32]);
        let taps: Vec<_> = out.features.iter().map(|(s, f)| (*s, f.dims())).collect();
        assert_eq!(
            taps,
            vec![(8, [2, 16, 4, 4]), (4, [2, 8, 8, 8]), (2, [2, 8, 16, 16])]
        );
        let expected: Vec<_> = sizes.tap_channels(Architecture::Unet);
        assert!(taps
            .iter()
            .zip(expected)
            .all(|((s, d), (es, ec))| *s == es && d[1] == ec));
    }

    #[test]
    fn swin_unet_shapes_and_taps_with_a_clamped_last_window() {
        let sizes = small_sizes();
        let device = Default::default();
        // 64 / 4 = 16 → grids 16, 8, 4, 2; window 4 tiles the first three, is clamped at 2.
        sizes.validate(Architecture::SwinUnet, 64, 1).unwrap();
        let m = sizes.init::<TestAutodiff>(Architecture::SwinUnet, 64, 1, 3, &device);
        let out = m.forward(Tensor::random(
            [2, 1, 64, 64],
            Distribution::Default,
            &device,
        ));
        assert_eq!(out.logits.dims(), [2, 3, 64, 64]);
        let taps: Vec<_> = out.features.iter().map(|(s, f)| (*s, f.dims())).collect();
        assert_eq!(
            taps,
            vec![
                (16, [2, 48, 4, 4]),
                (8, [2, 24, 8, 8]),
                (4, [2, 12, 16, 16])
            ]
        );
    }

    /// The final expansion goes back to pixels by `patch_size` and keeps `embed_dim` channels for
    /// the head whatever the patch size (patch 2 once halved them and the head's conv panicked).
    #[test]
    fn swin_unet_runs_at_every_patch_size() {
        let device = Default::default();
        for (patch, size) in [(2, 32), (4, 64), (8, 128)] {
            let mut sizes = small_sizes();
            sizes.swin_unet.patch_size = patch;
            sizes.validate(Architecture::SwinUnet, size, 1).unwrap();
            let m = sizes.init::<TestAutodiff>(Architecture::SwinUnet, size, 1, 3, &device);
            let out = m.forward(Tensor::random(
                [1, 1, size, size],
                Distribution::Default,
                &device,
            ));
            assert_eq!(out.logits.dims(), [1, 3, size, size], "patch {patch}");
            // Token grid 16 → decoder taps on grids 4, 8, 16, i.e. at strides 4p, 2p, p, where
            // CFCL pairs them with the CNN's taps of the same stride.
            let taps: Vec<_> = out.features.iter().map(|(s, f)| (*s, f.dims())).collect();
            assert_eq!(
                taps,
                vec![
                    (4 * patch, [1, 48, 4, 4]),
                    (2 * patch, [1, 24, 8, 8]),
                    (patch, [1, 12, 16, 16])
                ],
                "patch {patch}"
            );
            assert_eq!(
                sizes.tap_channels(Architecture::SwinUnet),
                vec![(4 * patch, 48), (2 * patch, 24), (patch, 12)]
            );
        }
    }

    #[test]
    fn invalid_swin_size_is_refused_with_nearest_valid_sizes() {
        let sizes = small_sizes();
        let msg = sizes
            .validate(Architecture::SwinUnet, 100, 1)
            .unwrap_err()
            .to_string();
        // 96 fails too: its grids 24, 12, 6, 3 include 6, neither a multiple of 4 nor ≤ 4.
        assert!(msg.contains("100") && msg.contains("64, 128"), "{msg}");
        let default_swin = ModelSizes::default();
        default_swin
            .validate(Architecture::SwinUnet, 224, 1)
            .unwrap();
        assert!(default_swin
            .validate(Architecture::SwinUnet, 256, 1)
            .is_err());
        assert!(sizes.validate(Architecture::Unet, 40, 1).is_err());
    }

    #[test]
    fn shifted_window_attention_is_translation_consistent_under_the_mask() {
        // Gradient flows through every parameter of a shifted block (mask and roll are wired).
        let device = Default::default();
        let block = swin::SwinBlock::<TestAutodiff>::new(8, 2, [8, 8], 4, 2, 2.0, 0.0, &device);
        let x = Tensor::<TestAutodiff, 3>::random([1, 64, 8], Distribution::Default, &device)
            .require_grad();
        let y = block.forward(x.clone());
        assert_eq!(y.dims(), [1, 64, 8]);
        let g = y.sum().backward();
        let gx: Vec<f32> = x.grad(&g).unwrap().into_data().to_vec().unwrap();
        assert!(gx.iter().all(|v| v.is_finite()) && gx.iter().any(|v| v.abs() > 0.0));
    }
}

#[cfg(test)]
mod eval_mode_tests {
    use super::*;
    use crate::test_backend::TestAutodiff;
    use burn::module::AutodiffModule;
    use burn::tensor::Distribution;

    /// Without stochastic depth, a Swin-UNet has no train-only behaviour: the training forward
    /// (autodiff backend) and the inference forward (`valid()`) must agree.
    #[test]
    fn swin_unet_train_and_eval_forward_agree() {
        let sizes = SwinUnetConfig {
            embed_dim: 8,
            heads: [1, 1, 2, 2],
            window: 4,
            drop_path: 0.0,
            ..Default::default()
        };
        let device = Default::default();
        let m = sizes.init::<TestAutodiff>(64, 1, 3, &device);
        let x = Tensor::<TestAutodiff, 4>::random([2, 1, 64, 64], Distribution::Default, &device);
        let train = m.forward(x.clone()).logits.into_data();
        let eval = m.valid().forward(x.inner()).logits.into_data();
        train.assert_approx_eq::<f32>(&eval, burn::tensor::Tolerance::absolute(1e-4));
    }
}
