//! The `lapdev-kube-manager` binary.

fn main() {}
