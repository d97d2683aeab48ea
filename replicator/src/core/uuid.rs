//! Generation UUIDs: which side has the newer data, and how much must be copied.
//!
//! The rules of DRBD 8.4's `drbd_uuid_compare`, in its order. Bit 0 of a UUID says "was
//! Primary when generated" and is ignored in comparisons.

use crate::md::UUID_JUST_CREATED;

/// Generation UUIDs of one node: current, bitmap, history\[0\], history\[1\].
pub type Uuids = [u64; 4];

/// What a comparison decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncDecision {
    /// The data is the same generation: no resync.
    NoSync,
    /// I am SyncSource; copy the blocks in the bitmaps.
    SourceBitmap,
    /// I am SyncSource; copy everything.
    SourceFull,
    /// I am SyncTarget; receive the blocks in the bitmaps.
    TargetBitmap,
    /// I am SyncTarget; receive everything.
    TargetFull,
    /// Both changed since they were last connected, and a policy may resolve it.
    SplitBrain,
    /// Both changed, with a common ancestor only in the history: no automatic recovery.
    SplitBrainDisconnect,
    /// No common ancestor at all: these are not replicas of each other.
    UnrelatedData,
}

fn eq(a: u64, b: u64) -> bool {
    a & !1 == b & !1
}

/// Compares my UUIDs with the peer's; `i_crashed_primary`/`peer_crashed_primary` break the tie
/// when the current UUIDs are equal (the crashed Primary may have writes the other lacks).
pub fn compare(
    mine: &Uuids,
    peer: &Uuids,
    i_crashed_primary: bool,
    peer_crashed_primary: bool,
) -> SyncDecision {
    let (me_new, peer_new) = (mine[0] == UUID_JUST_CREATED, peer[0] == UUID_JUST_CREATED);
    match (me_new, peer_new) {
        (true, true) => return SyncDecision::NoSync,
        (true, false) => return SyncDecision::TargetFull,
        (false, true) => return SyncDecision::SourceFull,
        (false, false) => {}
    }
    if eq(mine[0], peer[0]) {
        return match (i_crashed_primary, peer_crashed_primary) {
            (true, false) => SyncDecision::SourceBitmap,
            (false, true) => SyncDecision::TargetBitmap,
            _ => SyncDecision::NoSync,
        };
    }
    if peer[1] != 0 && eq(mine[0], peer[1]) {
        return SyncDecision::TargetBitmap;
    }
    if peer[2..].iter().any(|&h| h != 0 && eq(mine[0], h)) {
        return SyncDecision::TargetFull;
    }
    if mine[1] != 0 && eq(mine[1], peer[0]) {
        return SyncDecision::SourceBitmap;
    }
    if mine[2..].iter().any(|&h| h != 0 && eq(peer[0], h)) {
        return SyncDecision::SourceFull;
    }
    if mine[1] != 0 && eq(mine[1], peer[1]) {
        return SyncDecision::SplitBrain;
    }
    let mine_all = mine[1..].iter().filter(|&&u| u != 0);
    if mine_all
        .clone()
        .any(|&m| peer[1..].iter().any(|&p| p != 0 && eq(m, p)))
    {
        return SyncDecision::SplitBrainDisconnect;
    }
    SyncDecision::UnrelatedData
}

#[cfg(test)]
mod tests {
    use super::SyncDecision::*;
    use super::*;

    const J: u64 = UUID_JUST_CREATED;

    #[test]
    fn every_rule() {
        assert_eq!(compare(&[J, 0, 0, 0], &[J, 0, 0, 0], false, false), NoSync);
        assert_eq!(
            compare(&[J, 0, 0, 0], &[0xA0, 0, 0, 0], false, false),
            TargetFull
        );
        assert_eq!(
            compare(&[0xA0, 0, 0, 0], &[J, 0, 0, 0], false, false),
            SourceFull
        );
        assert_eq!(
            compare(&[0xA0, 0, 0, 0], &[0xA1, 0, 0, 0], false, false),
            NoSync,
            "bit 0 ignored"
        );
        assert_eq!(
            compare(&[0xA0, 0, 0, 0], &[0xA0, 0, 0, 0], true, false),
            SourceBitmap
        );
        assert_eq!(
            compare(&[0xA0, 0, 0, 0], &[0xA0, 0, 0, 0], false, true),
            TargetBitmap
        );
        // The peer went on without me: its bitmap UUID is my current.
        assert_eq!(
            compare(&[0xA0, 0, 0, 0], &[0xB0, 0xA0, 0, 0], false, false),
            TargetBitmap
        );
        assert_eq!(
            compare(&[0xB0, 0xA0, 0, 0], &[0xA0, 0, 0, 0], false, false),
            SourceBitmap
        );
        // Further back: only in the history.
        assert_eq!(
            compare(&[0xA0, 0, 0, 0], &[0xC0, 0xB0, 0xA0, 0], false, false),
            TargetFull
        );
        assert_eq!(
            compare(&[0xC0, 0xB0, 0xA0, 0], &[0xA0, 0, 0, 0], false, false),
            SourceFull
        );
        // Both went on from the same point.
        assert_eq!(
            compare(&[0xB0, 0xA0, 0, 0], &[0xC0, 0xA0, 0, 0], false, false),
            SplitBrain
        );
        assert_eq!(
            compare(&[0xB0, 0xD0, 0xA0, 0], &[0xC0, 0xE0, 0xA0, 0], false, false),
            SplitBrainDisconnect
        );
        assert_eq!(
            compare(&[0xB0, 0, 0, 0], &[0xC0, 0, 0, 0], false, false),
            UnrelatedData
        );
    }
}
