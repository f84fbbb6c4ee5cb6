//! ctrcl-data: reading medical images and datasets, splits, resampling, augmentation and
//! batching. Pure Rust, no tensor framework.

pub mod dataset;
pub mod error;
pub mod fetch;
pub mod image2d;
pub mod inspect;
pub mod labels;
pub mod loader;
pub mod nifti;
pub mod npy;
pub mod prepare;
pub mod resize;
pub mod split;

pub use error::{DataError, Result};
