//! Any bytes given to ctrcl's nrrd reader (`ctrcl_data::fuzzing::nrrd`): a value or an error, never
//! a panic or an abort.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ctrcl_data::fuzzing::nrrd(data));
