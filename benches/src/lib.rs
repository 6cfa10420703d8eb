//! Shared generators for zgate benchmarks.
