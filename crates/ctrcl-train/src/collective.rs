//! The two collective operations of a data-parallel step (Burn's all-reduce, `burn-collective`):
//! a student's gradients and the logged loss terms, each averaged over all peers. Used by the
//! step ([`crate::step::pair_step`] with `sync`); the peers themselves are started by
//! `crate::distributed`.

use anyhow::{anyhow, Result};
use burn::collective::{all_reduce, PeerId, ReduceOperation};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorPrimitive;

use crate::objective::Terms;

/// Averages a student's gradients over the peers with one collective all-reduce (mean) of all
/// its gradients flattened in module order — the same order on every peer, and one collective
/// operation instead of one per parameter.
pub(crate) fn all_reduce_mean<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
    peer: PeerId,
) -> Result<GradientsParams> {
    /// Takes every gradient out of `grads`, flattened, in visiting order, noting which
    /// parameters had one.
    struct Take<'a, I: Backend> {
        grads: &'a mut GradientsParams,
        flat: Vec<Tensor<I, 1>>,
        present: Vec<bool>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Take<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let grad = self.grads.remove::<B::InnerBackend, D>(param.id);
            self.present.push(grad.is_some());
            if let Some(g) = grad {
                self.flat.push(g.flatten::<1>(0, D - 1));
            }
        }
    }
    /// Puts the reduced values back, in the same order.
    struct Put<'a, I: Backend> {
        grads: &'a mut GradientsParams,
        reduced: Tensor<I, 1>,
        offset: usize,
        expected: &'a [bool],
        index: usize,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Put<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let had_grad = self.expected[self.index];
            self.index += 1;
            if had_grad {
                let shape: [usize; D] = param.val().dims();
                let n: usize = shape.iter().product();
                let values = self
                    .reduced
                    .clone()
                    .narrow(0, self.offset, n)
                    .reshape(shape);
                self.offset += n;
                self.grads.register::<B::InnerBackend, D>(param.id, values);
            }
        }
    }
    let mut take = Take::<B::InnerBackend> {
        grads: &mut grads,
        flat: Vec::new(),
        present: Vec::new(),
    };
    module.visit(&mut take);
    let (flat, present) = (take.flat, take.present);
    if flat.is_empty() {
        return Ok(grads);
    }
    let flat = Tensor::cat(flat, 0);
    let reduced =
        all_reduce::<B::InnerBackend>(peer, flat.into_primitive().tensor(), ReduceOperation::Mean)
            .map_err(|e| anyhow!("peer {}: gradient all-reduce failed: {e:?}", peer.0))?;
    let mut put = Put::<B::InnerBackend> {
        grads: &mut grads,
        reduced: Tensor::from_primitive(TensorPrimitive::Float(reduced)),
        offset: 0,
        expected: &present,
        index: 0,
    };
    module.visit(&mut put);
    Ok(grads)
}

/// Averages the loss terms of both students over all peers (one small all-reduce), so every
/// peer — on every machine — sees the global batch's terms.
pub(crate) fn all_reduce_terms<B: Backend>(
    terms: [Terms; 2],
    peer: PeerId,
    peers: usize,
    device: &B::Device,
) -> Result<[Terms; 2]> {
    let mut flat: Vec<f32> = terms
        .iter()
        .flat_map(|t| t.to_array())
        .map(|v| v as f32)
        .collect();
    let half = flat.len() / 2;
    // Burn's ring all-reduce across nodes needs at least one element per node.
    flat.resize(flat.len().max(peers), 0.0);
    let n = flat.len();
    let tensor = Tensor::<B, 1>::from_data(TensorData::new(flat, [n]), device);
    let reduced = all_reduce::<B>(
        peer,
        tensor.into_primitive().tensor(),
        ReduceOperation::Mean,
    )
    .map_err(|e| anyhow!("peer {}: loss all-reduce failed: {e:?}", peer.0))?;
    let values = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(reduced))
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| anyhow!("reading the reduced loss terms: {e:?}"))?;
    Ok([
        Terms::from_slice(&values[..half]),
        Terms::from_slice(&values[half..2 * half]),
    ])
}
