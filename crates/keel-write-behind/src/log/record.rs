//! The record format: `len: u32 LE | crc: u32 LE | payload`, where `crc` is
//! the masked CRC-32C of the length bytes and the payload. Covering the
//! length means a zero-filled region (a file extended but never written) is
//! never read as an empty record; the mask keeps a record that contains its
//! own CRC from checking out.

/// Header bytes before each payload.
pub(crate) const HEADER: usize = 8;
/// Largest payload a record may carry (16 MiB).
pub(crate) const MAX_PAYLOAD: usize = 16 << 20;

fn checksum(len: [u8; 4], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), payload);
    // LevelDB's mask.
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends the record for `payload` to `out`.
pub(crate) fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&checksum(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The payload length of a whole, valid record at `data[at..]`.
pub(crate) fn valid_at(data: &[u8], at: usize) -> Option<usize> {
    let header = data.get(at..at + HEADER)?;
    let len_bytes: [u8; 4] = header[..4].try_into().ok()?;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len == 0 || len > MAX_PAYLOAD {
        return None;
    }
    let payload = data.get(at + HEADER..at + HEADER + len)?;
    (checksum(len_bytes, payload) == crc).then_some(len)
}

/// What one segment's bytes hold.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Valid records: offset in the segment and payload.
    pub(crate) records: Vec<(usize, Vec<u8>)>,
    /// Bytes that are not a valid record but are followed by one (or, in a
    /// sealed segment, by nothing): offset and bytes.
    pub(crate) corrupt: Vec<(usize, Vec<u8>)>,
    /// Where the valid data ends.
    pub(crate) end: usize,
    /// Bytes after `end` in the last segment: a torn append, cut off.
    pub(crate) torn: usize,
}

/// Reads the records of `data` from `start`. In the segment appends go to
/// (`last`), invalid bytes that no valid record follows are a torn append;
/// anywhere else they are corruption.
pub(crate) fn scan(data: &[u8], start: usize, last: bool) -> Scan {
    let mut scan = Scan::default();
    let mut at = start.min(data.len());
    while at < data.len() {
        if let Some(len) = valid_at(data, at) {
            scan.records.push((at, data[at + HEADER..at + HEADER + len].to_vec()));
            at += HEADER + len;
            continue;
        }
        // Resynchronise on the next offset where a whole record checks out.
        match (at + 1..data.len()).find(|&next| valid_at(data, next).is_some()) {
            Some(next) => {
                scan.corrupt.push((at, data[at..next].to_vec()));
                at = next;
            }
            None if last => {
                scan.torn = data.len() - at;
                break;
            }
            None => {
                scan.corrupt.push((at, data[at..].to_vec()));
                at = data.len();
            }
        }
    }
    scan.end = at;
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode(p, &mut out);
        }
        out
    }

    #[test]
    fn records_round_trip_and_zeroes_are_not_records() {
        let data = log(&[b"one", b"two"]);
        let scan = scan(&data, 0, true);
        assert_eq!(scan.records, vec![(0, b"one".to_vec()), (11, b"two".to_vec())]);
        assert_eq!((scan.end, scan.torn), (data.len(), 0));
        assert!(valid_at(&[0u8; 64], 0).is_none());
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_flipped_byte_is_skipped() {
        let mut data = log(&[b"one", b"two", b"three"]);
        data.truncate(data.len() - 2);
        let torn = scan(&data, 0, true);
        assert_eq!(torn.records.len(), 2);
        assert_eq!((torn.end, torn.torn), (22, data.len() - 22));

        let mut data = log(&[b"one", b"two", b"three"]);
        data[13] ^= 0x40;
        let flipped = scan(&data, 0, true);
        assert_eq!(flipped.records, vec![(0, b"one".to_vec()), (22, b"three".to_vec())]);
        assert_eq!(flipped.corrupt, vec![(11, data[11..22].to_vec())]);
        assert_eq!(flipped.torn, 0);
    }

    #[test]
    fn invalid_bytes_at_the_end_of_a_sealed_segment_are_corruption() {
        let mut data = log(&[b"one", b"two"]);
        data[15] ^= 1;
        let sealed = scan(&data, 0, false);
        assert_eq!(sealed.records.len(), 1);
        assert_eq!(sealed.corrupt.len(), 1);
        assert_eq!((sealed.torn, sealed.end), (0, data.len()));
    }
}
