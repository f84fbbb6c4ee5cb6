//! Any bytes given to ctrcl's hdf5 reader (`ctrcl_data::fuzzing::hdf5`): a value or an error, never
//! a panic or an abort.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ctrcl_data::fuzzing::hdf5(data));
