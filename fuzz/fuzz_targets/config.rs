//! Any text given to the training configuration's TOML + `--set` merge
//! (`ctrcl_train::config::fuzz_config`): a configuration or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ctrcl_train::config::fuzz_config(data));
