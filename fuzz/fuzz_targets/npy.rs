//! Any bytes given to ctrcl's npy reader (`ctrcl_data::fuzzing::npy`): a value or an error, never
//! a panic or an abort.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ctrcl_data::fuzzing::npy(data));
