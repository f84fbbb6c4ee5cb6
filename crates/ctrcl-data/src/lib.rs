//! ctrcl-data: reading medical images and datasets, splits, resampling, augmentation and
//! batching. Pure Rust, no tensor framework.

pub mod augment;
pub mod classes;
pub mod dataset;
pub mod dicom;
pub mod error;
pub mod fetch;
#[cfg(test)]
mod fixtures;
#[doc(hidden)]
pub mod fuzzing;
pub mod geometry;
pub mod hdf5;
pub mod image2d;
pub mod inspect;
pub mod labelled;
pub mod labels;
pub mod layouts;
pub mod loader;
pub mod mrc;
pub mod nifti;
mod nifti_gz;
pub mod nnunet;
pub mod normalize;
pub mod npy;
pub mod nrrd;
pub mod prepare;
pub mod resize;
pub mod split;

pub use error::{DataError, Result};
