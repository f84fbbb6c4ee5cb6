//! ctrcl-models
