//! The log's files, without threads or clocks: group appends, checkpoints,
//! segment removal and recovery. Everything here blocks; the async layer
//! runs it on a blocking thread, and the crash-consistency tests drive it
//! directly over a simulated disk.

use std::collections::VecDeque;
use std::io;

use super::record;
use super::storage::Storage;

const SEGMENT_SUFFIX: &str = ".wal";
const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_MAGIC: &[u8; 4] = b"KLCP";

fn segment_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

fn encode_checkpoint(position: u64) -> Vec<u8> {
    let mut out = CHECKPOINT_MAGIC.to_vec();
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&out).to_le_bytes());
    out
}

fn decode_checkpoint(data: &[u8]) -> Option<u64> {
    if data.len() != 16 || &data[..4] != CHECKPOINT_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(data[12..16].try_into().ok()?);
    (crc32c::crc32c(&data[..12]) == crc).then(|| u64::from_le_bytes(data[4..12].try_into().unwrap_or_default()))
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Records after the checkpoint, in log order: position and payload.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Bytes that failed their check inside the log: position and bytes.
    pub corrupt: Vec<(u64, Vec<u8>)>,
    /// Bytes of a torn append cut from the tail.
    pub torn_bytes: u64,
    /// Bytes missing between segments (a segment removed or cut short by
    /// something other than this log).
    pub missing_bytes: u64,
    /// The durable checkpoint recovery started from.
    pub checkpoint: u64,
    /// Whether the checkpoint was unreadable or past the end of the log (the
    /// whole log was replayed and the checkpoint written again).
    pub checkpoint_reset: bool,
}

/// The log's files and positions. A position is a byte offset in the
/// log's whole history; a segment is named by the position of its first
/// byte.
pub struct LogCore {
    storage: Box<dyn Storage>,
    segment_bytes: u64,
    /// Segment bases, oldest first; the last one takes appends.
    segments: VecDeque<u64>,
    /// The position of the next append.
    head: u64,
    /// The durable checkpoint: every record before it is done.
    checkpoint: u64,
    /// After a failed append the tail of this segment is unknown: it must be
    /// cut back to this length (or, failing that, bounded by a new segment
    /// at `head`) before anything else is appended.
    repair: Option<(u64, u64)>,
    /// The bytes of one group, kept between appends so a group commit
    /// allocates nothing once the largest group has been seen.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for LogCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogCore")
            .field("segments", &self.segments)
            .field("head", &self.head)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

impl LogCore {
    /// Opens the log in `storage`, replaying what the checkpoint does not
    /// cover. A torn tail is cut off; a segment wholly before the checkpoint
    /// (left by a crash between checkpoint and removal) is removed.
    pub fn open(mut storage: Box<dyn Storage>, segment_bytes: u64) -> io::Result<(Self, Recovery)> {
        let mut bases: Vec<u64> = Vec::new();
        let mut stored_checkpoint = None;
        for name in storage.list()? {
            if let Some(base) = name.strip_suffix(SEGMENT_SUFFIX).and_then(|b| b.parse().ok()) {
                bases.push(base);
            } else if name == CHECKPOINT {
                stored_checkpoint = Some(decode_checkpoint(&storage.read(CHECKPOINT)?));
            } else if name.ends_with(".tmp") {
                storage.remove(&name)?;
            }
        }
        bases.sort_unstable();
        let mut recovery = Recovery::default();
        let mut checkpoint = match stored_checkpoint {
            Some(Some(position)) => position,
            // Unreadable: replay everything (the upsert is idempotent).
            Some(None) => {
                recovery.checkpoint_reset = true;
                0
            }
            None => 0,
        };
        // Segments wholly before the checkpoint are done.
        while bases.len() > 1 && bases[1] <= checkpoint {
            storage.remove(&segment_name(bases[0]))?;
            bases.remove(0);
        }
        let mut segments = VecDeque::new();
        let mut head = bases.first().copied().unwrap_or(checkpoint);
        if checkpoint < head {
            // Before the oldest segment: nothing of it is left to skip.
            checkpoint = head;
        }
        let mut scanned = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let data = storage.read(&segment_name(base))?;
            let next = bases.get(i + 1).copied();
            let mut len = data.len() as u64;
            if let Some(next) = next {
                if base + len > next {
                    // The tail of a failed append, bounded by the next segment.
                    len = next - base;
                } else if base + len < next {
                    recovery.missing_bytes += next - base - len;
                }
            }
            let start = checkpoint.saturating_sub(base).min(len) as usize;
            let scan = record::scan(&data[..len as usize], start, next.is_none());
            scanned.push((base, scan));
            segments.push_back(base);
            head = base + len;
        }
        let end = scanned.last().map_or(head, |(base, scan)| base + scan.end as u64);
        if checkpoint > end {
            // The log ends before its own checkpoint: something removed or
            // cut its files. Deliver all there is rather than skip anything.
            recovery.checkpoint_reset = true;
            checkpoint = segments.front().copied().unwrap_or(end);
            scanned.clear();
            for (i, &base) in bases.iter().enumerate() {
                let data = storage.read(&segment_name(base))?;
                let limit = bases.get(i + 1).map_or(data.len(), |next| (next - base).min(data.len() as u64) as usize);
                scanned.push((base, record::scan(&data[..limit], 0, i + 1 == bases.len())));
            }
        }
        for (base, scan) in scanned {
            recovery.records.extend(scan.records.into_iter().map(|(at, payload)| (base + at as u64, payload)));
            recovery.corrupt.extend(scan.corrupt.into_iter().map(|(at, bytes)| (base + at as u64, bytes)));
            if scan.torn > 0 {
                storage.truncate(&segment_name(base), scan.end as u64)?;
                recovery.torn_bytes += scan.torn as u64;
                head = base + scan.end as u64;
            }
        }
        if recovery.checkpoint_reset || stored_checkpoint.is_none() {
            storage.replace(CHECKPOINT, &encode_checkpoint(checkpoint))?;
        }
        recovery.checkpoint = checkpoint;
        let core = Self {
            storage,
            segment_bytes: segment_bytes.max(1),
            segments,
            head,
            checkpoint,
            repair: None,
            scratch: Vec::new(),
        };
        Ok((core, recovery))
    }

    /// Appends `payloads` and syncs them: one write and one `fdatasync` for
    /// the group. Returns each record's position. On an error nothing of the
    /// group counts as written, and later appends go to a new segment.
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> io::Result<Vec<u64>> {
        if let Some(big) = payloads.iter().find(|p| p.is_empty() || p.len() > record::MAX_PAYLOAD) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a record of {} bytes (1 to {} allowed)", big.len(), record::MAX_PAYLOAD),
            ));
        }
        let mut roll = false;
        if let Some((base, len)) = self.repair {
            if self.storage.truncate(&segment_name(base), len).is_ok() {
                self.repair = None;
            } else if len > 0 {
                // Bounded by the next segment's name instead.
                roll = true;
                self.repair = None;
            } else {
                // An empty segment with junk in it: its name is the next
                // append's; it must go first.
                self.storage.remove(&segment_name(base))?;
                self.repair = None;
                self.segments.pop_back();
            }
        }
        let active = self.segments.back().copied();
        let full = active.is_none_or(|base| self.head - base >= self.segment_bytes);
        if (full || roll) && active != Some(self.head) {
            self.segments.push_back(self.head);
        }
        let base = self.segments.back().copied().unwrap_or(self.head);
        let name = segment_name(base);
        let mut buffer = std::mem::take(&mut self.scratch);
        buffer.clear();
        let mut positions = Vec::with_capacity(payloads.len());
        for payload in payloads {
            positions.push(self.head + buffer.len() as u64);
            record::encode(payload, &mut buffer);
        }
        let written = self.storage.append(&name, &buffer).and_then(|()| self.storage.sync(&name));
        let length = buffer.len() as u64;
        // A group far larger than usual is not kept.
        if buffer.capacity() <= 4 << 20 {
            self.scratch = buffer;
        }
        if let Err(err) = written {
            // Take the partial bytes back now if the disk lets us; the next
            // append tries again before it writes.
            let len = self.head - base;
            if self.storage.truncate(&name, len).is_err() {
                self.repair = Some((base, len));
            }
            return Err(err);
        }
        self.head += length;
        Ok(positions)
    }

    /// Makes `position` the durable checkpoint (every record before it is
    /// done), then removes the segments it no longer needs: only after the
    /// checkpoint is on disk. Returns the bytes freed.
    pub fn checkpoint(&mut self, position: u64) -> io::Result<u64> {
        let position = position.min(self.head);
        if position <= self.checkpoint {
            return Ok(0);
        }
        self.storage.replace(CHECKPOINT, &encode_checkpoint(position))?;
        self.checkpoint = position;
        let mut freed = 0;
        while self.segments.len() > 1 && self.segments[1] <= position {
            let base = self.segments[0];
            self.storage.remove(&segment_name(base))?;
            self.segments.pop_front();
            freed += self.segments[0] - base;
        }
        Ok(freed)
    }

    /// The position of the next append.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The durable checkpoint.
    pub fn durable_checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Bytes in the log's segments.
    pub fn bytes(&self) -> u64 {
        self.head - self.segments.front().copied().unwrap_or(self.head)
    }

    /// Segment files.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// The base of the second-oldest segment: a checkpoint at or past it
    /// frees the oldest.
    pub fn next_release(&self) -> Option<u64> {
        self.segments.get(1).copied()
    }

    /// Writes `bytes` under `name` beside the log (a corrupt record kept as
    /// a dead letter).
    pub fn keep(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.storage.replace(name, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_refuse_damage() {
        let data = encode_checkpoint(123_456);
        assert_eq!(decode_checkpoint(&data), Some(123_456));
        for i in 0..data.len() {
            let mut bad = data.clone();
            bad[i] ^= 1;
            assert_eq!(decode_checkpoint(&bad), None, "byte {i}");
        }
        assert_eq!(decode_checkpoint(&data[..15]), None);
    }
}
