//! ctrcl-train: the losses (L_seg, RLCL with the ARM, CFCL with the CPM, DML), the collaborative
//! training loop, checkpoints, validation and testing. Generic over Burn's backends.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod distributed;
pub mod evaluate;
pub mod export;
pub mod losses;
pub mod memory;
pub mod predictor;
pub mod report;
pub mod run_dir;
pub mod student;
pub mod tensorboard;
pub mod tester;
pub mod trainer;

pub use config::TrainConfig;
