//! Fuzz harness for the grant store's record format ([`crate::grant_record`]): what a SQLite row
//! or a Redis hash holds, read back by every replica and version.

use crate::grant_record::{decode, encode};

/// Input: any bytes, read as text. Invariants: decoding never panics; a record that decodes
/// encodes to a record that decodes to the same grant, and encoding that grant again gives the
/// same text (one stored form per grant, so replicas never disagree about a record).
pub fn grant_record(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(grant) = decode(&text) else { return };
    let stored = encode(&grant);
    let again = decode(&stored).expect("an encoded grant decodes"); // ok: a fuzz invariant; a panic is the finding
    assert_eq!(again, grant, "a record changed through a round trip");
    assert_eq!(encode(&again), stored, "one grant, two stored forms");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_round_trips_and_garbage_is_refused_quietly() {
        let seed = include_bytes!("../../../fuzz/corpus/grant_record/seed-grant");
        assert!(decode(&String::from_utf8_lossy(seed)).is_ok(), "the seed is a valid record");
        grant_record(seed);
        grant_record(b"{\"v\":1}");
        grant_record(&[0xff, 0xfe, b'{']);
    }
}
