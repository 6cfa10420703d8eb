//! zgate: the data path.
fn main() {}
