//! Any bytes given to the NIfTI-1/2 parser: a volume or an error, never a panic or an abort.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ctrcl_data::nifti::parse_nifti_bytes(std::path::Path::new("fuzz.nii"), data);
});
