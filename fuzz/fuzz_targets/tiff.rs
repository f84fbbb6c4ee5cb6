//! Any bytes given to ctrcl's tiff reader (`ctrcl_data::fuzzing::tiff`): a value or an error, never
//! a panic or an abort.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ctrcl_data::fuzzing::tiff(data));
