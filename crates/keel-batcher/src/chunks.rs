//! Entity ids packed into notification payloads: each UUID as 22 characters
//! of unpadded base64url, concatenated, at most 363 per payload so a payload
//! stays under PostgreSQL's 8000-byte `NOTIFY` limit.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

/// Characters per encoded id.
pub(crate) const ID_LEN: usize = 22;
/// Largest payload produced.
pub(crate) const MAX_PAYLOAD: usize = 8000;
/// Ids per payload: `MAX_PAYLOAD / ID_LEN`.
pub(crate) const IDS_PER_CHUNK: usize = MAX_PAYLOAD / ID_LEN;

/// A payload that is not a sequence of encoded ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    /// The length is not a multiple of 22.
    #[error("payload length {0} is not a multiple of {ID_LEN}")]
    Length(usize),
    /// A piece is not base64url of 16 bytes.
    #[error("payload piece {index} is not a base64url UUID")]
    Encoding {
        /// Which piece (0-based).
        index: usize,
    },
}

/// Encodes the distinct `ids` (sorted) into payloads of at most 363 ids.
pub(crate) fn encode_chunks(ids: impl IntoIterator<Item = Uuid>) -> Vec<String> {
    let unique: BTreeSet<Uuid> = ids.into_iter().collect();
    let unique: Vec<Uuid> = unique.into_iter().collect();
    unique
        .chunks(IDS_PER_CHUNK)
        .map(|chunk| {
            let mut payload = String::with_capacity(chunk.len() * ID_LEN);
            for id in chunk {
                URL_SAFE_NO_PAD.encode_string(id.as_bytes(), &mut payload);
            }
            payload
        })
        .collect()
}

/// Decodes one payload, rejecting anything malformed.
pub(crate) fn decode_chunk(payload: &[u8]) -> Result<Vec<Uuid>, ChunkError> {
    if !payload.len().is_multiple_of(ID_LEN) {
        return Err(ChunkError::Length(payload.len()));
    }
    payload
        .chunks(ID_LEN)
        .enumerate()
        .map(|(index, piece)| {
            let bytes = URL_SAFE_NO_PAD.decode(piece).map_err(|_| ChunkError::Encoding { index })?;
            Uuid::from_slice(&bytes).map_err(|_| ChunkError::Encoding { index })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|i| Uuid::from_u128(0x1234_5678_9abc_def0_u128.wrapping_mul(i as u128 + 1))).collect()
    }

    #[test]
    fn chunk_sizes_for_0_1_363_364_600_1000_ids() {
        for (n, chunks) in [(0, 0), (1, 1), (363, 1), (364, 2), (600, 2), (1000, 3)] {
            let input = ids(n);
            let encoded = encode_chunks(input.clone());
            assert_eq!(encoded.len(), chunks, "{n} ids");
            assert!(encoded.iter().all(|c| c.len() <= MAX_PAYLOAD && c.len().is_multiple_of(ID_LEN)), "{n} ids");
            let mut decoded: Vec<Uuid> = encoded.iter().flat_map(|c| decode_chunk(c.as_bytes()).unwrap()).collect();
            let mut expected = input;
            expected.sort();
            decoded.sort();
            assert_eq!(decoded, expected, "{n} ids round-trip");
        }
        assert_eq!(IDS_PER_CHUNK, 363);
        assert_eq!(encode_chunks(ids(363))[0].len(), 7986);
    }

    #[test]
    fn duplicates_are_sent_once() {
        let id = Uuid::from_u128(7);
        assert_eq!(encode_chunks([id, id, id]).concat().len(), ID_LEN);
    }

    #[test]
    fn malformed_payloads_are_rejected() {
        let good = encode_chunks(ids(2)).remove(0);
        assert_eq!(decode_chunk(&good.as_bytes()[..21]), Err(ChunkError::Length(21)));
        assert_eq!(decode_chunk(&good.as_bytes()[..43]), Err(ChunkError::Length(43)));
        let mut bad = good.clone().into_bytes();
        bad[25] = b'*';
        assert_eq!(decode_chunk(&bad), Err(ChunkError::Encoding { index: 1 }));
        assert_eq!(decode_chunk(b""), Ok(vec![]));
    }
}
