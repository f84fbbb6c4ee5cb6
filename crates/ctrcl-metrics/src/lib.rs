//! ctrcl-metrics
