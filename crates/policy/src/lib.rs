//! zgate's policy language. (crate docs to be written with the parser)

pub mod model;
