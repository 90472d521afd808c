//! Property-test helpers for the readers of stored data: a proptest configuration that writes no
//! failure files into the repository, and corruptions of a valid encoding.

use proptest::prelude::*;

/// `cases` cases; failures are reported, never persisted (no `proptest-regressions/` files).
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

/// Arbitrary bytes, up to `max` of them.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

/// `valid` with a few bytes overwritten (by any byte, or by one that means something in JSON
/// or YAML), then perhaps truncated.
pub fn corrupted(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len().max(1);
    let byte = prop_oneof![
        any::<u8>(),
        proptest::sample::select(b"0123456789-+.eE{}[]\":,' \n#&*!|>-ntrufalsx".to_vec()),
    ];
    (
        proptest::collection::vec((0..len, byte), 1..6),
        proptest::option::of(0..=valid.len()),
    )
        .prop_map(move |(edits, cut)| {
            let mut b = valid.clone();
            for (i, x) in edits {
                if let Some(v) = b.get_mut(i) {
                    *v = x;
                }
            }
            if let Some(cut) = cut {
                b.truncate(cut);
            }
            b
        })
}

/// The tiny torch checkpoint the tests ship, and the pickle inside it (dicts, tensors,
/// persistent ids, globals): valid input to corrupt.
#[cfg(feature = "controller")]
pub const TINY_PTH: &[u8] = include_bytes!("../tests/fixtures/weights/tiny.pth");

/// The pickle of [`TINY_PTH`].
#[cfg(feature = "controller")]
pub fn tiny_pickle() -> Vec<u8> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(TINY_PTH)).unwrap();
    let name = (zip.file_names())
        .find(|n| n.ends_with("data.pkl"))
        .unwrap()
        .to_string();
    let mut out = vec![];
    std::io::Read::read_to_end(&mut zip.by_name(&name).unwrap(), &mut out).unwrap();
    out
}
