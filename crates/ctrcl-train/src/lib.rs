//! ctrcl-train: the losses (L_seg, RLCL with the ARM, CFCL with the CPM, DML), the collaborative
//! training loop, checkpoints, validation and testing. Generic over Burn's backends.

pub mod bench;
pub mod checkpoint;
mod collective;
pub mod config;
pub mod distributed;
pub mod engine;
pub mod experiment;
pub mod export;
mod feed;
pub mod inference;
pub mod kernels;
pub mod losses;
pub mod memory;
mod objective;
pub mod predictor;
pub mod quickstart;
pub mod report;
pub mod role;
pub mod run_dir;
mod run_log;
pub mod score;
mod semi;
mod step;
pub mod student;
mod teacher;
pub mod tensorboard;
pub mod tester;
pub mod trainer;

pub use config::TrainConfig;
