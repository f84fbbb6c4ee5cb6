//! ctrcl-train
