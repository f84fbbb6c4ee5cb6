//! Any bytes given to the NRRD parser (header, geometry, attached raw/gzip/ascii data): a volume
//! or an error, never a panic or an abort. Detached data files resolve inside an empty folder.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ctrcl_data::nrrd::parse_nrrd(std::path::Path::new("/nonexistent/fuzz.nrrd"), data);
});
