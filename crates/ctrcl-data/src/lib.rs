//! ctrcl-data
