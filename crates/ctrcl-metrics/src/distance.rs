//! Surface-distance metrics exactly as medpy computes them (METHOD.md §8, ANCHORS.md):
//! surface = mask XOR one binary erosion with face connectivity and a zero border; distances by an
//! exact Euclidean distance transform with voxel spacing; HD95 the 95th percentile (numpy's linear
//! interpolation) of both directed surface-distance sets pooled (medpy) or the larger of the two
//! directed 95th percentiles (MONAI).
//!
//! Arrays are flat, row-major (C order) over `shape`; `spacing` gives the voxel size per axis.

/// How HD95 combines the two directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hd95Mode {
    /// medpy `hd95`: 95th percentile of the pooled distances of both directions.
    Pooled,
    /// MONAI: the larger of the two directed 95th percentiles.
    Max,
}

/// Voxels of `mask` that have a face neighbour outside the mask or lie on the array border
/// (medpy: `mask ^ binary_erosion(mask, cross, border_value=0)`).
pub fn surface(mask: &[bool], shape: &[usize]) -> Vec<bool> {
    let strides = strides(shape);
    let mut out = vec![false; mask.len()];
    for (i, &inside) in mask.iter().enumerate() {
        if !inside {
            continue;
        }
        let mut interior = true;
        for (&n, &stride) in shape.iter().zip(&strides) {
            let coord = (i / stride) % n;
            if coord == 0 || coord + 1 == n || !mask[i - stride] || !mask[i + stride] {
                interior = false;
                break;
            }
        }
        out[i] = !interior;
    }
    out
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1];
    }
    s
}

/// Exact Euclidean distance from every voxel to the nearest `true` voxel of `targets`, with
/// anisotropic spacing (separable squared-distance transform of Felzenszwalb & Huttenlocher).
/// Voxels are at infinite distance when `targets` is empty.
pub fn distance_transform(targets: &[bool], shape: &[usize], spacing: &[f64]) -> Vec<f64> {
    assert_eq!(shape.len(), spacing.len(), "one spacing per axis");
    let total = targets.len();
    if total == 0 {
        return Vec::new();
    }
    let strides = strides(shape);
    // Axis 0 on the binary input: the distance along the axis to the nearest target is a count,
    // found by a forward and a backward sweep over whole rows (`stride` contiguous values at a
    // time) instead of line by line, where every element of a line sits a whole slice apart in
    // memory (the slowest pass by far on a 512×512×150 volume).
    let (n0, row) = (shape[0], strides[0]);
    let mut d = vec![f64::INFINITY; total];
    for k in 0..n0 {
        let (done, rest) = d.split_at_mut(k * row);
        let here = &mut rest[..row];
        let is_target = &targets[k * row..(k + 1) * row];
        let before = (k > 0).then(|| &done[(k - 1) * row..]);
        for j in 0..row {
            here[j] = if is_target[j] {
                0.0
            } else {
                before.map_or(f64::INFINITY, |b| b[j] + 1.0)
            };
        }
    }
    for k in (0..n0.saturating_sub(1)).rev() {
        let (here, after) = d[k * row..(k + 2) * row].split_at_mut(row);
        for (h, a) in here.iter_mut().zip(after.iter()) {
            *h = h.min(a + 1.0);
        }
    }
    let step0 = spacing[0];
    d.iter_mut().for_each(|v| {
        let x = *v * step0;
        *v = x * x;
    });
    // The other axes by the lower envelope of parabolas, a tile of `TILE` neighbouring lines at
    // a time so that reads and writes are contiguous runs rather than single strided values.
    const TILE: usize = 16;
    let mut env = Envelope::default();
    let mut tile = Vec::new();
    for (axis, (&n, &stride)) in shape.iter().zip(&strides).enumerate().skip(1) {
        let step = spacing[axis];
        // The array is [outer, n, stride]: one line per (outer, inner) pair.
        for outer in (0..total).step_by(n * stride) {
            for first in (0..stride).step_by(TILE) {
                let width = TILE.min(stride - first);
                let start = outer + first;
                tile.clear();
                for k in 0..n {
                    let at = start + k * stride;
                    tile.extend_from_slice(&d[at..at + width]);
                }
                for c in 0..width {
                    env.line.clear();
                    env.line.extend((0..n).map(|k| tile[k * width + c]));
                    env.run(step);
                    for (k, v) in env.out.iter().enumerate() {
                        tile[k * width + c] = *v;
                    }
                }
                for k in 0..n {
                    let at = start + k * stride;
                    d[at..at + width].copy_from_slice(&tile[k * width..(k + 1) * width]);
                }
            }
        }
    }
    d.iter_mut().for_each(|v| *v = v.sqrt());
    d
}

/// Buffers of the 1D transform, reused across lines.
#[derive(Default)]
struct Envelope {
    line: Vec<f64>,
    out: Vec<f64>,
    /// Parabolas of the lower envelope and the boundaries between them.
    v: Vec<usize>,
    z: Vec<f64>,
}

impl Envelope {
    /// 1D squared distance transform: out[q] = min_p (line[p] + ((q − p)·step)²).
    fn run(&mut self, step: f64) {
        let f = &self.line;
        let n = f.len();
        self.out.clear();
        self.out.resize(n, f64::INFINITY);
        self.v.clear();
        self.z.clear();
        let pos = |p: usize| p as f64 * step;
        let intersect = |a: usize, b: usize| -> f64 {
            ((f[b] + pos(b) * pos(b)) - (f[a] + pos(a) * pos(a))) / (2.0 * (pos(b) - pos(a)))
        };
        for q in (0..n).filter(|&p| f[p].is_finite()) {
            while let Some(&last) = self.v.last() {
                let s = intersect(last, q);
                if s <= *self.z.last().expect("one boundary per parabola") {
                    self.v.pop();
                    self.z.pop();
                } else {
                    break;
                }
            }
            let s = self
                .v
                .last()
                .map_or(f64::NEG_INFINITY, |&last| intersect(last, q));
            self.v.push(q);
            self.z.push(s);
        }
        if self.v.is_empty() {
            return;
        }
        let mut k = 0;
        for (q, o) in self.out.iter_mut().enumerate() {
            let x = pos(q);
            while k + 1 < self.v.len() && self.z[k + 1] < x {
                k += 1;
            }
            let dx = x - pos(self.v[k]);
            *o = f[self.v[k]] + dx * dx;
        }
    }
}

/// An axis-aligned box `[lo, hi)` per axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundingBox {
    pub lo: Vec<usize>,
    pub hi: Vec<usize>,
}

impl BoundingBox {
    /// The box grown by `margin` voxels on every side, clamped to `shape`.
    pub fn grown(&self, margin: usize, shape: &[usize]) -> BoundingBox {
        BoundingBox {
            lo: self.lo.iter().map(|&l| l.saturating_sub(margin)).collect(),
            hi: self
                .hi
                .iter()
                .zip(shape)
                .map(|(&h, &n)| (h + margin).min(n))
                .collect(),
        }
    }

    pub fn shape(&self) -> Vec<usize> {
        self.lo.iter().zip(&self.hi).map(|(l, h)| h - l).collect()
    }
}

/// The bounding box of each foreground label 1..`num_classes` over both label maps together
/// (`None` for background and for a label in neither). One pass over the arrays.
pub fn class_boxes(
    a: &[u8],
    b: &[u8],
    shape: &[usize],
    num_classes: usize,
) -> Vec<Option<BoundingBox>> {
    let nd = shape.len();
    let mut lo = vec![vec![usize::MAX; nd]; num_classes];
    let mut hi = vec![vec![0usize; nd]; num_classes];
    let mut coord = vec![0usize; nd];
    for (&x, &y) in a.iter().zip(b) {
        for label in [x as usize, y as usize] {
            if label > 0 && label < num_classes {
                for axis in 0..nd {
                    lo[label][axis] = lo[label][axis].min(coord[axis]);
                    hi[label][axis] = hi[label][axis].max(coord[axis] + 1);
                }
            }
        }
        // Odometer increment of the row-major coordinate.
        for axis in (0..nd).rev() {
            coord[axis] += 1;
            if coord[axis] < shape[axis] {
                break;
            }
            coord[axis] = 0;
        }
    }
    lo.into_iter()
        .zip(hi)
        .map(|(lo, hi)| (lo[0] != usize::MAX).then_some(BoundingBox { lo, hi }))
        .collect()
}

/// `labels == class` inside `bbox`, as a mask of shape `bbox.shape()`.
pub fn crop_mask(labels: &[u8], shape: &[usize], bbox: &BoundingBox, class: u8) -> Vec<bool> {
    let strides = strides(shape);
    let inner = *bbox.shape().last().expect("at least one axis");
    let crop = bbox.shape();
    let rows: usize = crop[..crop.len() - 1].iter().product();
    let mut out = Vec::with_capacity(rows * inner);
    let mut coord = bbox.lo[..crop.len() - 1].to_vec();
    for _ in 0..rows {
        let start: usize = coord
            .iter()
            .zip(&strides)
            .map(|(c, s)| c * s)
            .sum::<usize>()
            + bbox.lo[crop.len() - 1];
        out.extend(labels[start..start + inner].iter().map(|&v| v == class));
        for axis in (0..coord.len()).rev() {
            coord[axis] += 1;
            if coord[axis] < bbox.hi[axis] {
                break;
            }
            coord[axis] = bbox.lo[axis];
        }
    }
    out
}

/// Distances from each surface voxel of `result` to the nearest surface voxel of `reference`
/// (medpy `__surface_distances`); `None` when either mask is empty.
pub fn surface_distances(
    result: &[bool],
    reference: &[bool],
    shape: &[usize],
    spacing: &[f64],
) -> Option<Vec<f64>> {
    if !result.iter().any(|&v| v) || !reference.iter().any(|&v| v) {
        return None;
    }
    let result_border = surface(result, shape);
    let reference_border = surface(reference, shape);
    let dt = distance_transform(&reference_border, shape, spacing);
    Some(
        result_border
            .iter()
            .zip(&dt)
            .filter(|(b, _)| **b)
            .map(|(_, d)| *d)
            .collect(),
    )
}

/// numpy's default (linear) percentile, `q` in [0, 100]. Sorts `values`.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    assert!(!values.is_empty(), "percentile of nothing");
    values.sort_by(|a, b| a.partial_cmp(b).expect("finite distances"));
    let rank = q / 100.0 * (values.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    values[lo] + (values[hi] - values[lo]) * (rank - lo as f64)
}

/// The distance metrics of one class on one case; NaN when either mask is empty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Distances {
    pub hd95: f64,
    pub hd: f64,
    /// medpy `asd`: mean distance from the result's surface to the reference's.
    pub asd: f64,
    /// medpy 0.5 `assd`: mean of both directed surface-distance sets pooled (so the direction
    /// with more surface voxels weighs more; older medpy averaged the two means).
    pub assd: f64,
}

impl Distances {
    pub const NAN: Distances = Distances {
        hd95: f64::NAN,
        hd: f64::NAN,
        asd: f64::NAN,
        assd: f64::NAN,
    };
}

/// HD95 (in the given mode), HD, ASD and ASSD of `result` against `reference`.
pub fn distances(
    result: &[bool],
    reference: &[bool],
    shape: &[usize],
    spacing: &[f64],
    mode: Hd95Mode,
) -> Distances {
    let (Some(mut forward), Some(mut backward)) = rayon::join(
        || surface_distances(result, reference, shape, spacing),
        || surface_distances(reference, result, shape, spacing),
    ) else {
        return Distances::NAN;
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let asd = mean(&forward);
    let assd = (forward.iter().sum::<f64>() + backward.iter().sum::<f64>())
        / (forward.len() + backward.len()) as f64;
    let hd = forward.iter().chain(&backward).cloned().fold(0.0, f64::max);
    let hd95 = match mode {
        Hd95Mode::Pooled => {
            let mut pooled: Vec<f64> = forward.iter().chain(&backward).copied().collect();
            percentile(&mut pooled, 95.0)
        }
        Hd95Mode::Max => percentile(&mut forward, 95.0).max(percentile(&mut backward, 95.0)),
    };
    Distances {
        hd95,
        hd,
        asd,
        assd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked_squares() {
        // medpy on two 2×2 squares offset by one pixel in a 5×5 grid:
        // hd95 = 1.4142135623730951, asd = 0.8535533905932737 (binary.hd95 / binary.asd).
        let mut a = vec![false; 25];
        let mut b = vec![false; 25];
        for (y, x) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
            a[y * 5 + x] = true;
            b[(y + 1) * 5 + x + 1] = true;
        }
        let d = distances(&a, &b, &[5, 5], &[1.0, 1.0], Hd95Mode::Pooled);
        assert!((d.hd95 - std::f64::consts::SQRT_2).abs() < 1e-12, "{d:?}");
        assert!((d.asd - 0.8535533905932737).abs() < 1e-12, "{d:?}");
        assert!((d.hd - 2f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn edt_matches_brute_force_with_anisotropic_spacing() {
        // Shapes that exercise the row sweeps of axis 0 and the tiles of the other axes: lines
        // narrower than a tile, several tiles with a remainder (37 = 16 + 16 + 5), 1D and 2D
        // arrays, and lines without any target (infinite until a later axis reaches them).
        let cases: [(&[usize], &[f64], usize); 5] = [
            (&[4, 5, 6], &[2.5, 0.8, 1.3], 23),
            (&[3, 7, 37], &[1.7, 0.6, 0.9], 41),
            (&[50], &[0.7], 9),
            (&[9, 40], &[1.1, 2.3], 57),
            (&[2, 3, 20], &[1.0, 1.0, 1.0], 997),
        ];
        for (shape, spacing, every) in cases {
            let n: usize = shape.iter().product();
            let targets: Vec<bool> = (0..n).map(|i| (i * 7919) % every == 0).collect();
            let dt = distance_transform(&targets, shape, spacing);
            let st = strides(shape);
            let coord = |i: usize| -> Vec<usize> {
                shape.iter().zip(&st).map(|(&s, &t)| (i / t) % s).collect()
            };
            for (i, &got) in dt.iter().enumerate() {
                let ci = coord(i);
                let brute = (0..n)
                    .filter(|&j| targets[j])
                    .map(|j| {
                        let cj = coord(j);
                        (0..shape.len())
                            .map(|a| ((ci[a] as f64 - cj[a] as f64) * spacing[a]).powi(2))
                            .sum::<f64>()
                            .sqrt()
                    })
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    (got - brute).abs() < 1e-9,
                    "{shape:?} voxel {i}: {got} vs {brute}"
                );
            }
        }
        let none = distance_transform(&[false; 12], &[3, 4], &[1.0, 1.0]);
        assert!(none.iter().all(|v| v.is_infinite()));
    }

    #[test]
    fn boxes_and_crops_cover_each_class() {
        // 2×3×4 maps; class 1 in a at (0,1,1), in b at (1,2,3); class 2 only at (1,0,0) in b.
        let shape = [2, 3, 4];
        let mut a = vec![0u8; 24];
        let mut b = vec![0u8; 24];
        a[4 + 1] = 1;
        b[12 + 8 + 3] = 1;
        b[12] = 2;
        let boxes = class_boxes(&a, &b, &shape, 4);
        let one = boxes[1].clone().unwrap();
        assert_eq!(
            (one.lo.clone(), one.hi.clone()),
            (vec![0, 1, 1], vec![2, 3, 4])
        );
        assert_eq!(boxes[2].as_ref().unwrap().shape(), vec![1, 1, 1]);
        assert!(boxes[3].is_none());
        assert!(boxes[0].is_none(), "background is never cropped");
        let crop = crop_mask(&b, &shape, &one, 1);
        assert_eq!(crop.len(), 2 * 2 * 3);
        assert_eq!(crop.iter().filter(|&&v| v).count(), 1);
        assert!(crop[2 * 3 + 3 + 2], "(1,2,3) is the crop's last voxel");
        assert_eq!(one.grown(1, &shape).lo, vec![0, 0, 0]);
    }

    #[test]
    fn empty_masks_give_nan_and_percentile_interpolates() {
        let a = vec![false; 9];
        let b = vec![true; 9];
        assert!(distances(&a, &b, &[3, 3], &[1.0, 1.0], Hd95Mode::Pooled)
            .hd95
            .is_nan());
        // numpy.percentile([1, 2, 3, 4], 95) = 3.85
        assert!((percentile(&mut [4.0, 1.0, 3.0, 2.0], 95.0) - 3.85).abs() < 1e-12);
    }
}
