//! Record framing and segment scanning: pure functions over bytes, no IO.

use std::fmt;

/// Bytes of the record header: length, checksum, sequence number.
pub(crate) const HEADER_BYTES: usize = 16;

/// The largest payload one record may carry.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;

/// Where one valid record sits in its segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Sequence number of the record.
    pub seq: u64,
    /// Offset of the record header in the segment file.
    pub off: u32,
    /// Payload length.
    pub len: u32,
}

impl Entry {
    /// Offset just past the record.
    pub fn end(&self) -> u64 {
        u64::from(self.off) + HEADER_BYTES as u64 + u64::from(self.len)
    }
}

/// Why the bytes at an offset are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bad {
    /// The file ends inside the record.
    Torn,
    /// The length field is larger than any record may be.
    Length(u32),
    /// The payload does not match its checksum.
    Checksum,
    /// The sequence number does not continue the segment.
    Sequence { found: u64, expected: u64 },
    /// The offset is beyond what the in-memory index can address.
    TooFar,
}

impl fmt::Display for Bad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Torn => write!(f, "record cut short by the end of the file"),
            Self::Length(len) => write!(f, "record length {len} is too large"),
            Self::Checksum => write!(f, "checksum mismatch"),
            Self::Sequence { found, expected } => {
                write!(
                    f,
                    "sequence number {found} where {expected} or later was expected"
                )
            }
            Self::TooFar => write!(f, "segment larger than 4 GiB"),
        }
    }
}

/// A stretch of a segment that was skipped during a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Issue {
    /// Offset of the first byte that did not parse, or of a record after a sequence gap.
    pub offset: usize,
    /// Bytes skipped before the next valid record.
    pub skipped: usize,
    /// Sequence numbers missing between the last good record and the next one.
    pub lost: u64,
    /// What was wrong at `offset`.
    pub reason: Bad,
}

/// The result of scanning one segment file.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Valid records, in file order, with increasing sequence numbers.
    pub entries: Vec<Entry>,
    /// Damage followed by valid records.
    pub issues: Vec<Issue>,
    /// Damage that runs to the end of the file: offset of the first bad byte and why.
    pub tail: Option<(usize, Bad)>,
    /// Offset of an end marker ([`END`]): the segment's records end there, and what follows
    /// is not damage (the previous use of a recycled file, or zeros).
    pub end: Option<usize>,
}

/// The end marker: a header of zeros (length 0, the checksum of nothing, sequence number 0,
/// which no record has). A store writes it behind its records when the file goes on with
/// bytes of an earlier use.
pub(crate) const END: [u8; HEADER_BYTES] = [0; HEADER_BYTES];

fn is_end(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_BYTES && bytes[..HEADER_BYTES] == END
}

/// Appends one framed record to `out`. The caller has checked `payload.len() <= MAX_PAYLOAD_BYTES`.
pub(crate) fn encode(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    // Cannot truncate: MAX_PAYLOAD_BYTES < u32::MAX and the caller checked the length.
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Parses the record at the start of `bytes`: its sequence number and payload length.
pub(crate) fn parse(bytes: &[u8]) -> Result<(u64, u32), Bad> {
    if bytes.len() < HEADER_BYTES {
        return Err(Bad::Torn);
    }
    let len = u32_at(bytes, 0);
    if len as usize > MAX_PAYLOAD_BYTES {
        return Err(Bad::Length(len));
    }
    let end = HEADER_BYTES + len as usize;
    if bytes.len() < end {
        return Err(Bad::Torn);
    }
    if crc32fast::hash(&bytes[HEADER_BYTES..end]) != u32_at(bytes, 4) {
        return Err(Bad::Checksum);
    }
    Ok((u64_at(bytes, 8), len))
}

/// Scans a whole segment whose first record should carry `first_seq`.
///
/// A record is accepted when it parses and its sequence number is at least the next expected one
/// (a jump is reported as lost records) and not implausibly far ahead. After a bad record the scan
/// looks, byte by byte, for the next record that satisfies the same rule; if there is one the damage
/// becomes an [`Issue`] and the scan goes on, otherwise it is the segment's tail. An [`END`]
/// marker where a record should start ends the scan.
pub(crate) fn scan(bytes: &[u8], first_seq: u64) -> Scan {
    // A segment cannot hold more records than it has headers' worth of bytes, which bounds how far a
    // genuine sequence number may jump; a garbage header with a random sequence number is refused.
    let max_jump = (bytes.len() / HEADER_BYTES) as u64;
    let acceptable = |seq: u64, expected: u64| seq >= expected && seq - expected <= max_jump;
    let mut out = Scan::default();
    let mut off = 0;
    let mut expected = first_seq;
    // Offset and reason of damage skipped by a resync, reported with the next good record.
    let mut skipped: Option<(usize, Bad)> = None;
    while off < bytes.len() {
        if off > u32::MAX as usize {
            out.tail = Some((off, Bad::TooFar));
            break;
        }
        if skipped.is_none() && is_end(&bytes[off..]) {
            out.end = Some(off);
            break;
        }
        let parsed = parse(&bytes[off..]).and_then(|(seq, len)| {
            if acceptable(seq, expected) {
                Ok((seq, len))
            } else {
                Err(Bad::Sequence {
                    found: seq,
                    expected,
                })
            }
        });
        match parsed {
            Ok((seq, len)) => {
                if let Some((at, reason)) = skipped.take() {
                    out.issues.push(Issue {
                        offset: at,
                        skipped: off - at,
                        lost: seq - expected,
                        reason,
                    });
                } else if seq > expected {
                    let reason = Bad::Sequence {
                        found: seq,
                        expected,
                    };
                    out.issues.push(Issue {
                        offset: off,
                        skipped: 0,
                        lost: seq - expected,
                        reason,
                    });
                }
                // `off <= u32::MAX` was checked above.
                out.entries.push(Entry {
                    seq,
                    off: off as u32,
                    len,
                });
                off += HEADER_BYTES + len as usize;
                expected = seq.saturating_add(1);
            }
            Err(reason) => {
                let next = (off + 1..bytes.len()).find(|&at| {
                    parse(&bytes[at..]).is_ok_and(|(seq, _)| acceptable(seq, expected))
                });
                match next {
                    Some(at) => {
                        skipped = Some((off, reason));
                        off = at;
                    }
                    None => {
                        out.tail = Some((off, reason));
                        break;
                    }
                }
            }
        }
    }
    out
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(first: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            encode(&mut out, first + i as u64, p);
        }
        out
    }

    #[test]
    fn scan_clean_segment() {
        let bytes = records(5, &[b"a", b"", b"ccc"]);
        let scan = scan(&bytes, 5);
        let seqs: Vec<u64> = scan.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [5, 6, 7]);
        assert!(scan.issues.is_empty());
        assert_eq!(scan.tail, None);
    }

    #[test]
    fn torn_tail_is_tail() {
        let mut bytes = records(1, &[b"hello", b"world"]);
        bytes.truncate(bytes.len() - 2);
        let scan = scan(&bytes, 1);
        assert_eq!(scan.entries.len(), 1);
        assert_eq!(scan.tail, Some((21, Bad::Torn)));
    }

    #[test]
    fn zeros_end_the_records() {
        let mut bytes = records(1, &[b"hello"]);
        bytes.extend_from_slice(&[0; 100]);
        let zeros = scan(&bytes, 1);
        assert_eq!(zeros.entries.len(), 1);
        assert!(zeros.issues.is_empty());
        assert_eq!((zeros.end, zeros.tail), (Some(21), None));
        // Fewer zeros than a header: a torn record.
        let mut bytes = records(1, &[b"hello"]);
        bytes.extend_from_slice(&[0; 10]);
        let torn = scan(&bytes, 1);
        assert_eq!((torn.end, torn.tail), (None, Some((21, Bad::Torn))));
    }

    #[test]
    fn an_end_marker_hides_the_previous_use_of_a_file() {
        // A recycled file: records 100.. of its previous use, overwritten from the start by
        // records 500.. and an end marker.
        let old = records(100, &[b"old-one", b"old-two", b"old-three", b"old-four"]);
        for new in [records(500, &[b"new"]), records(500, &[b"new-one-", b"n2"])] {
            let mut bytes = old.clone();
            let mut head = new.clone();
            head.extend_from_slice(&END);
            bytes[..head.len()].copy_from_slice(&head);
            let scan = scan(&bytes, 500);
            let seqs: Vec<u64> = scan.entries.iter().map(|e| e.seq).collect();
            assert_eq!(seqs.len(), if new.len() < 30 { 1 } else { 2 });
            assert_eq!(seqs[0], 500);
            assert!(scan.issues.is_empty(), "{:?}", scan.issues);
            assert_eq!((scan.end, scan.tail), (Some(new.len()), None));
        }
        // A torn write over the previous use (no marker yet): the old records are never taken
        // (numbered below the new ones); the torn part and what follows is the tail.
        let mut bytes = old.clone();
        let new = records(500, &[b"new-one-", b"n2"]);
        bytes[..new.len() - 3].copy_from_slice(&new[..new.len() - 3]);
        let scan = scan(&bytes, 500);
        assert_eq!(scan.entries.len(), 1);
        assert_eq!(scan.end, None);
        assert_eq!(scan.tail.map(|t| t.0), Some(24));
    }

    #[test]
    fn flipped_byte_resyncs() {
        let mut bytes = records(1, &[b"one", b"two", b"three"]);
        bytes[HEADER_BYTES + 3 + HEADER_BYTES] ^= 0xff; // payload of record 2
        let scan = scan(&bytes, 1);
        let seqs: Vec<u64> = scan.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 3]);
        assert_eq!(scan.issues.len(), 1);
        assert_eq!(scan.issues[0].lost, 1);
        assert_eq!(scan.issues[0].reason, Bad::Checksum);
        assert_eq!(scan.tail, None);
    }
}
