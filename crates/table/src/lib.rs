//! zgate's decision table. (crate docs to be written with the compiler)

pub mod facts;
