//! Random append, release and reopen sequences against an in-memory model of the log.

use std::collections::BTreeMap;

use proptest::prelude::*;

use meshgate_store::{FlushPolicy, Spares, Store, StoreConfig};

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<u8>),
    Batch(Vec<Vec<u8>>),
    /// Release up to `first_seq + n` (may pass the end).
    Release(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let payload = || proptest::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        4 => payload().prop_map(Op::Append),
        2 => proptest::collection::vec(payload(), 0..5).prop_map(Op::Batch),
        2 => (0u64..8).prop_map(Op::Release),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    records: BTreeMap<u64, Vec<u8>>,
    first: u64,
    next: u64,
}

/// `recycling`: segment files may be longer than their records (a reused spare file).
fn check(store: &Store, model: &Model, dir: &std::path::Path, recycling: bool) {
    let on_disk: u64 = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::metadata(p).expect("meta").len())
        .sum();
    if recycling {
        assert!(store.used_bytes() <= on_disk);
    } else {
        assert_eq!(store.used_bytes(), on_disk);
    }
    let want: Vec<(u64, Vec<u8>)> = model.records.iter().map(|(s, p)| (*s, p.clone())).collect();
    assert_eq!(store.read_from(0, usize::MAX).expect("read"), want);
    assert_eq!(store.first_seq(), model.first);
    assert_eq!(store.next_seq(), model.next);
    assert_eq!(store.len(), model.records.len() as u64);
    if let Some(&first) = model.records.keys().next() {
        let one = store.read_from(first + 1, 1).expect("read");
        let want: Vec<_> = model
            .records
            .range(first + 1..)
            .take(1)
            .map(|(s, p)| (*s, p.clone()))
            .collect();
        assert_eq!(one, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn store_matches_model(
        ops in proptest::collection::vec(op(), 1..40),
        segment_bytes in 40u64..300,
        recycling in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StoreConfig { segment_bytes, flush: FlushPolicy::EveryAppend, max_bytes: 1 << 20 };
        // Released segments kept as spare files and overwritten, or deleted.
        let spares = recycling.then(|| Spares::new(1 << 20));
        let open = || Store::open_with_spares(dir.path(), config.clone(), spares.clone());
        let (mut store, _) = open().expect("open");
        let mut model = Model { first: 1, next: 1, ..Model::default() };
        for op in ops {
            match op {
                Op::Append(p) => {
                    prop_assert_eq!(store.append(&p).expect("append"), model.next);
                    model.records.insert(model.next, p);
                    model.next += 1;
                }
                Op::Batch(ps) => {
                    let refs: Vec<&[u8]> = ps.iter().map(Vec::as_slice).collect();
                    let range = store.append_batch(&refs).expect("batch");
                    prop_assert_eq!(range.clone(), model.next..model.next + ps.len() as u64);
                    for p in ps {
                        model.records.insert(model.next, p);
                        model.next += 1;
                    }
                }
                Op::Release(n) => {
                    let up_to = model.first + n;
                    store.release_up_to(up_to).expect("release");
                    model.first = model.first.max((up_to + 1).min(model.next));
                    model.records = model.records.split_off(&model.first);
                }
                Op::Reopen => {
                    drop(store);
                    let (reopened, report) = open().expect("reopen");
                    prop_assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
                    prop_assert_eq!(report.truncated_bytes, 0);
                    store = reopened;
                }
            }
            check(&store, &model, dir.path(), recycling);
        }
    }
}
