//! zgate-control: compiles policy-as-code into decision tables.
fn main() {}
