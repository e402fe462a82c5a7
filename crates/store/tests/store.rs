//! Behaviour of the store on a real directory: append, replay, restart, damage, quota, release.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use meshgate_store::{FlushPolicy, RecoveryReport, Store, StoreConfig, StoreError};

fn config(segment_bytes: u64) -> StoreConfig {
    StoreConfig {
        segment_bytes,
        flush: FlushPolicy::EveryAppend,
        max_bytes: 1 << 20,
    }
}

fn open(dir: &Path, segment_bytes: u64) -> (Store, RecoveryReport) {
    Store::open(dir, config(segment_bytes)).expect("open")
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    out.sort();
    out
}

/// The spare segment files in `dir` and their sizes, by name.
fn spare_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out: Vec<(PathBuf, u64)> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("spare"))
        })
        .map(|p| {
            let len = fs::metadata(&p).expect("metadata").len();
            (p, len)
        })
        .collect();
    out.sort();
    out
}

fn payload(i: u64) -> Vec<u8> {
    format!("event-{i}").into_bytes()
}

fn all(store: &Store) -> Vec<(u64, Vec<u8>)> {
    store.read_from(0, usize::MAX).expect("read")
}

#[test]
fn append_read_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, report) = open(dir.path(), 1 << 20);
    assert_eq!(report, RecoveryReport::default());
    assert_eq!(
        (store.first_seq(), store.next_seq(), store.len()),
        (1, 1, 0)
    );
    for i in 1..=10 {
        assert_eq!(store.append(&payload(i)).expect("append"), i);
    }
    let batch: Vec<Vec<u8>> = (11..=15).map(payload).collect();
    let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
    assert_eq!(store.append_batch(&refs).expect("batch"), 11..16);
    assert_eq!(store.append_batch(&[]).expect("empty batch"), 16..16);
    let got = all(&store);
    assert_eq!(got, (1..=15).map(|i| (i, payload(i))).collect::<Vec<_>>());
    assert_eq!(
        store.read_from(7, 3).expect("read"),
        (7..10).map(|i| (i, payload(i))).collect::<Vec<_>>()
    );
    assert_eq!(store.len(), 15);
    assert_eq!(
        store.used_bytes(),
        fs::metadata(&segments(dir.path())[0]).expect("meta").len()
    );
}

#[test]
fn restart_keeps_data_and_sequence() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        // Small segments so that the log spans several files.
        let (mut store, _) = open(dir.path(), 64);
        for i in 1..=20 {
            store.append(&payload(i)).expect("append");
        }
    }
    assert!(segments(dir.path()).len() > 3);
    let (mut store, report) = open(dir.path(), 64);
    assert_eq!(report.records, 20);
    assert_eq!(report.truncated_bytes, 0);
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(store.next_seq(), 21);
    assert_eq!(store.append(b"after").expect("append"), 21);
    let got = all(&store);
    assert_eq!(got.len(), 21);
    assert!(got.iter().zip(1..).all(|((seq, _), want)| *seq == want));
}

#[test]
fn torn_last_write_is_truncated_and_appends_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut store, _) = open(dir.path(), 1 << 20);
        for i in 1..=5 {
            store.append(&payload(i)).expect("append");
        }
    }
    let seg = segments(dir.path())[0].clone();
    let len = fs::metadata(&seg).expect("meta").len();
    // Cut the last record in half.
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open")
        .set_len(len - 4)
        .expect("truncate");
    let (mut store, report) = open(dir.path(), 1 << 20);
    assert_eq!(report.records, 4);
    assert_eq!(report.truncated_bytes, (16 + payload(5).len() - 4) as u64);
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(store.append(b"five again").expect("append"), 5);
    drop(store);
    let (store, report) = open(dir.path(), 1 << 20);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(all(&store).last(), Some(&(5, b"five again".to_vec())));
}

#[test]
fn garbage_after_last_record_is_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut store, _) = open(dir.path(), 1 << 20);
        for i in 1..=3 {
            store.append(&payload(i)).expect("append");
        }
    }
    let seg = segments(dir.path())[0].clone();
    let mut file = OpenOptions::new().append(true).open(&seg).expect("open");
    file.write_all(&[0xab; 37]).expect("garbage");
    file.write_all(&[0; 50]).expect("zeros");
    drop(file);
    let (mut store, report) = open(dir.path(), 1 << 20);
    assert_eq!(report.records, 3);
    assert_eq!(report.truncated_bytes, 87);
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(store.append(b"four").expect("append"), 4);
    assert_eq!(all(&store).len(), 4);
}

#[test]
fn flipped_byte_in_middle_segment_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut store, _) = open(dir.path(), 100);
        for i in 1..=30 {
            store.append(&payload(i)).expect("append");
        }
    }
    let segs = segments(dir.path());
    assert!(segs.len() >= 4);
    // Flip a payload byte of the first record of the second segment.
    let victim = segs[1].clone();
    let mut bytes = fs::read(&victim).expect("read");
    bytes[17] ^= 0x40;
    fs::write(&victim, &bytes).expect("write");

    let (mut store, report) = open(dir.path(), 100);
    assert_eq!(report.corrupt.len(), 1, "{:?}", report.corrupt);
    let line = &report.corrupt[0];
    let name = victim
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        line.contains(&name) && line.contains("offset 0") && line.contains("1 records lost"),
        "{line}"
    );
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.records, 29);
    let got = all(&store);
    assert_eq!(got.len(), 29);
    assert_eq!(got.last(), Some(&(30, payload(30))));
    assert_eq!(store.append(b"more").expect("append"), 31);
}

#[test]
fn damaged_tail_of_middle_segment_reports_lost_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut store, _) = open(dir.path(), 100);
        for i in 1..=30 {
            store.append(&payload(i)).expect("append");
        }
    }
    let segs = segments(dir.path());
    let len = fs::metadata(&segs[0]).expect("meta").len();
    OpenOptions::new()
        .write(true)
        .open(&segs[0])
        .expect("open")
        .set_len(len - 3)
        .expect("truncate");
    let (store, report) = open(dir.path(), 100);
    assert_eq!(report.corrupt.len(), 2, "{:?}", report.corrupt);
    assert!(
        report.corrupt[1].contains("1 records lost"),
        "{:?}",
        report.corrupt
    );
    assert_eq!(all(&store).len(), 29);
    assert_eq!(store.len(), 29);
}

#[test]
fn quota_refuses_then_release_makes_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        segment_bytes: 100,
        flush: FlushPolicy::EveryAppend,
        max_bytes: 300,
    };
    let (mut store, _) = Store::open(dir.path(), config.clone()).expect("open");
    let record = [7u8; 34]; // 50 bytes framed, two per segment
    for _ in 0..6 {
        store.append(&record).expect("append");
    }
    assert_eq!(store.used_bytes(), 300);
    let err = store.append(&record).expect_err("quota");
    assert!(
        matches!(
            err,
            StoreError::QuotaExceeded {
                used: 300,
                max: 300
            }
        ),
        "{err}"
    );
    let err = store.append_batch(&[b"x"]).expect_err("quota");
    assert!(matches!(err, StoreError::QuotaExceeded { .. }));
    assert_eq!(store.next_seq(), 7);
    // Releasing one record of a segment frees nothing; releasing both frees the segment.
    store.release_up_to(1).expect("release");
    assert!(store.append(&record).is_err());
    store.release_up_to(2).expect("release");
    assert_eq!(store.used_bytes(), 200);
    assert_eq!(store.append(&record).expect("append"), 7);
    drop(store);
    let (store, report) = Store::open(dir.path(), config).expect("reopen");
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(
        (store.first_seq(), store.next_seq(), store.len()),
        (3, 8, 5)
    );
}

#[test]
fn release_deletes_whole_segments_and_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut store, _) = open(dir.path(), 64);
        for i in 1..=20 {
            store.append(&payload(i)).expect("append");
        }
        let before = segments(dir.path()).len();
        store.release_up_to(9).expect("release");
        assert!(segments(dir.path()).len() < before);
        assert_eq!(store.first_seq(), 10);
        assert_eq!(store.read_from(0, 1).expect("read")[0].0, 10);
        assert_eq!(store.len(), 11);
        // Lower marks are ignored.
        store.release_up_to(3).expect("release");
        assert_eq!(store.first_seq(), 10);
    }
    let (mut store, report) = open(dir.path(), 64);
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!((store.first_seq(), store.len()), (10, 11));
    // Release everything: no segment is left, and numbering continues after a restart.
    store.release_up_to(u64::MAX).expect("release");
    assert!(segments(dir.path()).is_empty());
    assert_eq!(
        (store.first_seq(), store.next_seq(), store.used_bytes()),
        (21, 21, 0)
    );
    drop(store);
    let (mut store, _) = open(dir.path(), 64);
    assert_eq!(store.append(b"x").expect("append"), 21);
}

#[test]
fn damaged_released_file_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut store, _) = open(dir.path(), 1 << 20);
        for i in 1..=4 {
            store.append(&payload(i)).expect("append");
        }
        store.release_up_to(2).expect("release");
    }
    fs::write(dir.path().join("released"), b"junk").expect("write");
    let (store, report) = open(dir.path(), 1 << 20);
    assert_eq!(report.corrupt.len(), 1, "{:?}", report.corrupt);
    // Released records come back (at least once), nothing is lost.
    assert_eq!(store.first_seq(), 1);
    assert_eq!(all(&store).len(), 4);
}

#[test]
fn interval_policy_and_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        flush: FlushPolicy::Interval(std::time::Duration::from_secs(3600)),
        ..StoreConfig::default()
    };
    let (mut store, _) = Store::open(dir.path(), config.clone()).expect("open");
    store.append(b"a").expect("append");
    store.sync().expect("sync");
    store.append(b"b").expect("append");
    drop(store);
    let (store, _) = Store::open(dir.path(), config).expect("open");
    assert_eq!(all(&store).len(), 2);
}

#[test]
fn invalid_config_and_oversized_payload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = StoreConfig {
        segment_bytes: 0,
        ..StoreConfig::default()
    };
    assert!(matches!(
        Store::open(dir.path(), bad),
        Err(StoreError::InvalidConfig(_))
    ));
    let (mut store, _) = open(dir.path(), 1 << 20);
    let big = vec![0; meshgate_store::MAX_PAYLOAD_BYTES + 1];
    assert!(matches!(
        store.append(&big),
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(store.next_seq(), 1);
}

#[test]
fn released_segments_are_reused_and_their_old_records_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let spares = meshgate_store::Spares::new(1 << 20);
    let open = || Store::open_with_spares(dir.path(), config(100), Some(spares.clone()));
    let (mut store, _) = open().expect("open");
    // Records 1..=20 over several segments; release them all.
    for i in 1..=20 {
        store.append(&payload(i)).unwrap();
    }
    let released = segments(dir.path()).len();
    assert!(released > 4);
    store.release_up_to(20).unwrap();
    let kept = spare_files(dir.path());
    assert_eq!(
        kept.len(),
        4,
        "up to four released segments are kept as spares"
    );
    assert!(segments(dir.path()).is_empty(), "and the others deleted");
    let held: u64 = kept.iter().map(|(_, len)| len).sum();
    assert_eq!(spares.held_bytes(), held);

    // The next segment is a spare, overwritten: shorter records than the old ones leave
    // old bytes behind them.
    store.append(b"a").unwrap();
    store.append(b"b").unwrap();
    let left = spare_files(dir.path());
    assert_eq!(left.len(), 3);
    let (_, spare_len) = kept.iter().find(|s| !left.contains(s)).unwrap().clone();
    assert_eq!(spares.held_bytes(), held - spare_len);
    let seg = segments(dir.path());
    assert_eq!(seg.len(), 1);
    assert!(
        fs::metadata(&seg[0]).unwrap().len() >= spare_len,
        "overwritten, not cut"
    );
    let want = vec![(21, b"a".to_vec()), (22, b"b".to_vec())];
    assert_eq!(all(&store), want);

    // After a restart only the new records are there, with no damage reported.
    drop(store);
    let (mut store, report) = open().expect("reopen");
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(all(&store), want);
    assert_eq!(store.append(b"c").unwrap(), 23);

    // A crash in the middle of a write to a reused file: the torn record is cut, the old
    // records behind it are never taken for new ones, appends go on.
    for i in 24..=40 {
        store.append(&payload(i)).unwrap();
    }
    store.release_up_to(40).unwrap();
    store.append(b"first").unwrap(); // 41, into the reused spare
    store.append(b"second").unwrap(); // 42
    drop(store);
    let seg = segments(dir.path()).pop().unwrap();
    let file = OpenOptions::new().write(true).open(&seg).unwrap();
    use std::os::unix::fs::FileExt;
    // Record 42 starts at 16 + 5 = 21: cut it short (its end marker gone too).
    file.write_all_at(&[0xAB; 20], 21 + 10).unwrap();
    drop(file);
    let (mut store, report) = open().expect("reopen after the torn write");
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert!(report.truncated_bytes > 0);
    assert_eq!(all(&store), vec![(41, b"first".to_vec())]);
    assert_eq!(store.append(b"again").unwrap(), 42);
    drop(store);
    let (store, report) = open().expect("reopen");
    assert!(report.corrupt.is_empty() && report.truncated_bytes == 0);
    assert_eq!(
        all(&store),
        vec![(41, b"first".to_vec()), (42, b"again".to_vec())]
    );
}

#[test]
fn without_a_budget_released_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let spares = meshgate_store::Spares::new(0);
    let (mut store, _) =
        Store::open_with_spares(dir.path(), config(200), Some(spares.clone())).expect("open");
    for i in 1..=20 {
        store.append(&payload(i)).unwrap();
    }
    store.release_up_to(20).unwrap();
    assert!(spare_files(dir.path()).is_empty());
    assert_eq!(spares.held_bytes(), 0);
    // Spares left by an earlier run (and by older versions, `spare`) are deleted by a store
    // without a budget.
    fs::write(dir.path().join("spare"), [1u8; 100]).unwrap();
    fs::write(dir.path().join("spare-7"), [1u8; 100]).unwrap();
    drop(store);
    let (_store, report) = open(dir.path(), 200);
    assert!(report.corrupt.is_empty());
    assert!(spare_files(dir.path()).is_empty());
}

#[test]
fn spares_left_by_an_earlier_run_are_kept_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["spare", "spare-3", "spare-9"] {
        fs::write(dir.path().join(name), [1u8; 100]).unwrap();
    }
    let spares = meshgate_store::Spares::new(250);
    let (mut store, report) =
        Store::open_with_spares(dir.path(), config(200), Some(spares.clone())).expect("open");
    assert!(report.corrupt.is_empty());
    assert_eq!(
        spare_files(dir.path()).len(),
        2,
        "as many as the budget holds"
    );
    assert_eq!(spares.held_bytes(), 200);
    // Reused: the first segment is one of them, its old bytes never read back.
    store.append(b"x").unwrap();
    assert_eq!(spare_files(dir.path()).len(), 1);
    drop(store);
    let (store, report) =
        Store::open_with_spares(dir.path(), config(200), Some(spares.clone())).expect("reopen");
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(all(&store), vec![(1, b"x".to_vec())]);
}
