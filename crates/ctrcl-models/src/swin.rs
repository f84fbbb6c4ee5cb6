//! Swin Transformer building blocks (Liu et al. 2021) in the layout of the reference
//! implementation, so that ImageNet weights can later be mapped key by key: windowed multi-head
//! self-attention with relative position bias, cyclic shift with an attention mask, patch merging,
//! and Swin-Unet's patch expanding. Tokens are `[B, L, C]` with `L = H·W` in row-major order.

use crate::ops;
use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;

/// Window attention with a learned relative position bias per head.
#[derive(Module, Debug)]
pub struct WindowAttention<B: Backend> {
    qkv: Linear<B>,
    proj: Linear<B>,
    /// `[(2w − 1)², heads]`.
    relative_position_bias_table: Param<Tensor<B, 2>>,
    heads: usize,
    window: usize,
}

impl<B: Backend> WindowAttention<B> {
    pub fn new(dim: usize, heads: usize, window: usize, device: &B::Device) -> Self {
        let table = Tensor::random(
            [(2 * window - 1) * (2 * window - 1), heads],
            Distribution::Normal(0.0, 0.02),
            device,
        );
        WindowAttention {
            qkv: LinearConfig::new(dim, 3 * dim).init(device),
            proj: LinearConfig::new(dim, dim).init(device),
            relative_position_bias_table: Param::from_tensor(table),
            heads,
            window,
        }
    }

    /// Index into the bias table for every (query, key) pair of a window, as in the reference.
    fn relative_index(&self, device: &B::Device) -> Tensor<B, 1, Int> {
        let w = self.window as i64;
        let n = (w * w) as usize;
        let mut idx = Vec::with_capacity(n * n);
        for q in 0..n as i64 {
            for k in 0..n as i64 {
                let dy = q / w - k / w + (w - 1);
                let dx = q % w - k % w + (w - 1);
                idx.push(dy * (2 * w - 1) + dx);
            }
        }
        Tensor::from_data(TensorData::new(idx, [n * n]), device)
    }

    /// # Shapes
    /// `x`: `[B·nW, N, C]` (N = w²), `mask`: `[nW, N, N]` additive → `[B·nW, N, C]`.
    pub fn forward(&self, x: Tensor<B, 3>, mask: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let [bw, n, c] = x.dims();
        let hd = c / self.heads;
        let qkv = ops::permute(
            ops::linear(&self.qkv, x).reshape([bw, n, 3, self.heads, hd]),
            [2, 0, 3, 1, 4],
        ); // [3, B·nW, heads, N, hd]
        let q = qkv.clone().narrow(0, 0, 1).reshape([bw, self.heads, n, hd]);
        let k = qkv.clone().narrow(0, 1, 1).reshape([bw, self.heads, n, hd]);
        let v = qkv.narrow(0, 2, 1).reshape([bw, self.heads, n, hd]);
        let q = q * (hd as f64).powf(-0.5);
        let attn = ops::matmul(q, k.swap_dims(2, 3)); // [B·nW, heads, N, N]
        let table = self.relative_position_bias_table.val();
        let bias = table.select(0, self.relative_index(&attn.device()));
        // [heads, N, N]. Bias and shift mask are summed on their own small grid first, then added
        // to the scores as one row broadcast over a 2D view (flex adds a [1, M] row per row; a
        // 4D/5D broadcast goes through its element-wise strided iterator).
        let bias = ops::permute(bias.reshape([n, n, self.heads]), [2, 0, 1]);
        let (nw, bias) = match mask {
            Some(mask) => {
                let nw = mask.dims()[0];
                (nw, bias.unsqueeze_dim::<4>(0) + mask.unsqueeze_dim::<4>(1)) // [nW, heads, N, N]
            }
            None => (1, bias.unsqueeze_dim::<4>(0)),
        };
        let per_group = nw * self.heads * n * n;
        let attn = (attn.reshape([bw / nw, per_group]) + bias.reshape([1, per_group]))
            .reshape([bw, self.heads, n, n]);
        let out = ops::swap_dims(ops::matmul(ops::softmax(attn, 3), v), 1, 2).reshape([bw, n, c]);
        ops::linear(&self.proj, out)
    }
}

/// Randomly drops whole residual branches per sample during training (stochastic depth).
fn drop_path<B: Backend>(x: Tensor<B, 3>, prob: f64) -> Tensor<B, 3> {
    if prob <= 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    let keep = 1.0 - prob;
    let [b, _, _] = x.dims();
    let mask = Tensor::<B, 3>::random([b, 1, 1], Distribution::Bernoulli(keep), &x.device());
    x * mask / keep
}

/// A Swin block: (shifted) window attention and an MLP, each pre-normed with a residual.
#[derive(Module, Debug)]
pub struct SwinBlock<B: Backend> {
    norm1: LayerNorm<B>,
    attn: WindowAttention<B>,
    norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    resolution: [usize; 2],
    window: usize,
    shift: usize,
    drop_path: f64,
}

impl<B: Backend> SwinBlock<B> {
    /// `window` must already be clamped to the grid; `shift` is 0 or `window / 2`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dim: usize,
        heads: usize,
        resolution: [usize; 2],
        window: usize,
        shift: usize,
        mlp_ratio: f64,
        drop_path: f64,
        device: &B::Device,
    ) -> Self {
        let hidden = (dim as f64 * mlp_ratio) as usize;
        SwinBlock {
            norm1: LayerNormConfig::new(dim).init(device),
            attn: WindowAttention::new(dim, heads, window, device),
            norm2: LayerNormConfig::new(dim).init(device),
            fc1: LinearConfig::new(dim, hidden).init(device),
            fc2: LinearConfig::new(hidden, dim).init(device),
            resolution,
            window,
            shift,
            drop_path,
        }
    }

    /// Attention mask of the shifted windows: −100 between tokens from different regions.
    ///
    /// # Shapes
    /// → `[nW, w², w²]`.
    fn shift_mask(&self, device: &B::Device) -> Tensor<B, 3> {
        let [h, w] = self.resolution;
        let (ws, s) = (self.window, self.shift);
        let region = |v: usize, len: usize| {
            if v < len - ws {
                0
            } else if v < len - s {
                1
            } else {
                2
            }
        };
        let (nh, nw) = (h / ws, w / ws);
        let n = ws * ws;
        let mut mask = Vec::with_capacity(nh * nw * n * n);
        for wy in 0..nh {
            for wx in 0..nw {
                let ids: Vec<usize> = (0..n)
                    .map(|i| region(wy * ws + i / ws, h) * 3 + region(wx * ws + i % ws, w))
                    .collect();
                for a in &ids {
                    for b in &ids {
                        mask.push(if a == b { 0.0f32 } else { -100.0 });
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(mask, [nh * nw, n, n]), device)
    }

    /// # Shapes
    /// `x`: `[B, H·W, C]` → `[B, H·W, C]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, l, c] = x.dims();
        let [h, w] = self.resolution;
        let ws = self.window;
        let shortcut = x.clone();
        let mut t = ops::layer_norm(&self.norm1, x).reshape([b, h, w, c]);
        let shift = self.shift as i64;
        // Burn's `roll` moves elements the other way from `torch.roll` (Burn: roll([0,1,2,3], 1)
        // = [1,2,3,0]; torch: [3,0,1,2]), so Swin's torch.roll(x, −s) is roll(x, +s) here.
        if shift > 0 {
            t = t.roll(&[shift, shift], &[1, 2]);
        }
        let windows = ops::permute(
            t.reshape([b, h / ws, ws, w / ws, ws, c]),
            [0, 1, 3, 2, 4, 5],
        )
        .reshape([b * (h / ws) * (w / ws), ws * ws, c]);
        let mask = (shift > 0).then(|| self.shift_mask(&windows.device()));
        let attended = self.attn.forward(windows, mask);
        let mut t = ops::permute(
            attended.reshape([b, h / ws, w / ws, ws, ws, c]),
            [0, 1, 3, 2, 4, 5],
        )
        .reshape([b, h, w, c]);
        if shift > 0 {
            t = t.roll(&[-shift, -shift], &[1, 2]);
        }
        let x = shortcut + drop_path(t.reshape([b, l, c]), self.drop_path);
        let mlp = ops::linear(
            &self.fc2,
            ops::gelu(ops::linear(
                &self.fc1,
                ops::layer_norm(&self.norm2, x.clone()),
            )),
        );
        x + drop_path(mlp, self.drop_path)
    }
}

/// 2× downsampling: concatenate each 2×2 neighbourhood (4C), LayerNorm, linear to 2C.
#[derive(Module, Debug)]
pub struct PatchMerging<B: Backend> {
    norm: LayerNorm<B>,
    reduction: Linear<B>,
    resolution: [usize; 2],
}

impl<B: Backend> PatchMerging<B> {
    pub fn new(dim: usize, resolution: [usize; 2], device: &B::Device) -> Self {
        PatchMerging {
            norm: LayerNormConfig::new(4 * dim).init(device),
            reduction: LinearConfig::new(4 * dim, 2 * dim)
                .with_bias(false)
                .init(device),
            resolution,
        }
    }

    /// # Shapes
    /// `[B, H·W, C]` → `[B, H/2·W/2, 2C]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, _, c] = x.dims();
        let [h, w] = self.resolution;
        // Reference order of the four neighbours: (0,0), (1,0), (0,1), (1,1) as (dy, dx),
        // i.e. dx outer, dy inner.
        let x = ops::permute(x.reshape([b, h / 2, 2, w / 2, 2, c]), [0, 1, 3, 4, 2, 5]).reshape([
            b,
            (h / 2) * (w / 2),
            4 * c,
        ]);
        ops::linear(&self.reduction, ops::layer_norm(&self.norm, x))
    }
}

/// Swin-Unet's patch expanding: linear to `factor²·C_out`, pixel shuffle by `factor`, LayerNorm.
#[derive(Module, Debug)]
pub struct PatchExpand<B: Backend> {
    expand: Linear<B>,
    norm: LayerNorm<B>,
    resolution: [usize; 2],
    factor: usize,
}

impl<B: Backend> PatchExpand<B> {
    /// Swin-Unet's decoder `PatchExpand`: 2× up-sampling that halves the channels.
    pub fn halving(dim: usize, resolution: [usize; 2], device: &B::Device) -> Self {
        Self::new(dim, dim / 2, resolution, 2, device)
    }

    /// Swin-Unet's `FinalPatchExpand_X4` for any patch size: `factor`× up-sampling back to pixel
    /// resolution that keeps the channels.
    pub fn to_pixels(
        dim: usize,
        resolution: [usize; 2],
        factor: usize,
        device: &B::Device,
    ) -> Self {
        Self::new(dim, dim, resolution, factor, device)
    }

    fn new(
        dim: usize,
        out: usize,
        resolution: [usize; 2],
        factor: usize,
        device: &B::Device,
    ) -> Self {
        PatchExpand {
            expand: LinearConfig::new(dim, factor * factor * out)
                .with_bias(false)
                .init(device),
            norm: LayerNormConfig::new(out).init(device),
            resolution,
            factor,
        }
    }

    /// # Shapes
    /// `[B, H·W, C]` → `[B, fH·fW, C_out]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, _, _] = x.dims();
        let [h, w] = self.resolution;
        let f = self.factor;
        let x = ops::linear(&self.expand, x);
        let cout = x.dims()[2] / (f * f);
        let x = ops::permute(x.reshape([b, h, w, f, f, cout]), [0, 1, 3, 2, 4, 5]).reshape([
            b,
            h * f * w * f,
            cout,
        ]);
        ops::layer_norm(&self.norm, x)
    }
}
