//! `migrations` CLI: `up`, `down`, `status`, `fresh` against `DATABASE_URL`.

fn main() {}
