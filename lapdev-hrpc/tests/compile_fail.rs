//! The macro's error messages, pinned: each misuse gives one clear error at the
//! user's span.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
