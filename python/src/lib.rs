//! The native half of the `ctrcl_metrics` Python package: thin wrappers over `ctrcl-metrics` that
//! take contiguous NumPy arrays (the Python half, `ctrcl_metrics/__init__.py`, converts and
//! checks them) and compute with the GIL released.

use ctrcl_metrics::distance::{distances as surface_metrics, Hd95Mode};
use ctrcl_metrics::modes::{evaluate_case, Mode};
use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

fn hd95_mode(name: &str) -> PyResult<Hd95Mode> {
    match name {
        "pooled" => Ok(Hd95Mode::Pooled),
        "max" => Ok(Hd95Mode::Max),
        other => Err(PyValueError::new_err(format!(
            "hd95 = {other:?}: \"pooled\" (medpy) or \"max\" (MONAI)"
        ))),
    }
}

/// The voxel size per axis: given (one finite positive value per axis) or 1.
fn spacing_of(spacing: Option<Vec<f64>>, ndim: usize) -> PyResult<Vec<f64>> {
    let spacing = spacing.unwrap_or_else(|| vec![1.0; ndim]);
    if spacing.len() != ndim {
        return Err(PyValueError::new_err(format!(
            "spacing has {} values for a {ndim}-dimensional array",
            spacing.len()
        )));
    }
    if let Some(s) = spacing.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(PyValueError::new_err(format!(
            "spacing value {s} is not a finite voxel size above 0"
        )));
    }
    Ok(spacing)
}

fn same_shape(a: &[usize], b: &[usize]) -> PyResult<()> {
    if a != b {
        return Err(PyValueError::new_err(format!(
            "the arrays' shapes differ: {a:?} and {b:?}"
        )));
    }
    Ok(())
}

/// `(true positives, false positives, false negatives)` of two binary masks.
#[pyfunction]
fn overlap(
    py: Python<'_>,
    result: PyReadonlyArrayDyn<'_, bool>,
    reference: PyReadonlyArrayDyn<'_, bool>,
) -> PyResult<(u64, u64, u64)> {
    same_shape(result.shape(), reference.shape())?;
    let (r, t) = (result.as_slice()?, reference.as_slice()?);
    Ok(py.detach(|| {
        r.iter().zip(t).fold((0, 0, 0), |(tp, fp, fn_), (&r, &t)| {
            (
                tp + u64::from(r && t),
                fp + u64::from(r && !t),
                fn_ + u64::from(!r && t),
            )
        })
    }))
}

/// `(hd95, hd, asd, assd)` of two binary masks (face connectivity, medpy's definitions); NaN
/// when either mask is empty.
#[pyfunction]
#[pyo3(signature = (result, reference, spacing=None, hd95="pooled"))]
fn distances(
    py: Python<'_>,
    result: PyReadonlyArrayDyn<'_, bool>,
    reference: PyReadonlyArrayDyn<'_, bool>,
    spacing: Option<Vec<f64>>,
    hd95: &str,
) -> PyResult<(f64, f64, f64, f64)> {
    same_shape(result.shape(), reference.shape())?;
    let shape = result.shape().to_vec();
    let spacing = spacing_of(spacing, shape.len())?;
    let mode = hd95_mode(hd95)?;
    let (r, t) = (result.as_slice()?, reference.as_slice()?);
    let d = py.detach(|| surface_metrics(r, t, &shape, &spacing, mode));
    Ok((d.hd95, d.hd, d.asd, d.assd))
}

/// Per foreground class 1..num_classes−1 of two label maps: `(dice, jaccard, hd95, asd)` in the
/// `transunet` or `strict` convention (METHOD.md §8).
#[pyfunction]
#[pyo3(signature = (pred, truth, num_classes, spacing=None, mode="transunet", hd95="pooled"))]
fn evaluate(
    py: Python<'_>,
    pred: PyReadonlyArrayDyn<'_, u8>,
    truth: PyReadonlyArrayDyn<'_, u8>,
    num_classes: usize,
    spacing: Option<Vec<f64>>,
    mode: &str,
    hd95: &str,
) -> PyResult<Vec<(f64, f64, f64, f64)>> {
    same_shape(pred.shape(), truth.shape())?;
    if num_classes < 2 {
        return Err(PyValueError::new_err(
            "num_classes must be at least 2 (background and one class)",
        ));
    }
    let shape = pred.shape().to_vec();
    let spacing = spacing_of(spacing, shape.len())?;
    let mode = match mode {
        "transunet" => Mode::TransUnet,
        "strict" => Mode::Strict,
        other => {
            return Err(PyValueError::new_err(format!(
                "mode = {other:?}: \"transunet\" or \"strict\""
            )))
        }
    };
    let hd95 = hd95_mode(hd95)?;
    let (p, t) = (pred.as_slice()?, truth.as_slice()?);
    if let Some(v) = p.iter().chain(t).find(|&&v| v as usize >= num_classes) {
        return Err(PyValueError::new_err(format!(
            "label {v} is outside the classes 0..{}",
            num_classes - 1
        )));
    }
    let metrics = py.detach(|| evaluate_case(p, t, &shape, &spacing, num_classes, mode, hd95));
    Ok(metrics
        .into_iter()
        .map(|m| (m.dice, m.jaccard, m.hd95, m.asd))
        .collect())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(overlap, m)?)?;
    m.add_function(wrap_pyfunction!(distances, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    Ok(())
}
