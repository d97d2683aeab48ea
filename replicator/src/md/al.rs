//! Activity-log transactions: 4 KiB blocks in a ring, DRBD 8.4's on-disk format.
//!
//! | offset | field |
//! |---|---|
//! | 0 | u32 magic 0x69cb65a2 |
//! | 4 | u32 tr_number |
//! | 8 | u32 crc32c of the block with this field zero |
//! | 12 | u16 transaction_type (0 update, 0xffff initialized) |
//! | 14 | u16 n_updates |
//! | 16 | u16 context_size |
//! | 18 | u16 context_start_slot_nr |
//! | 20 | 16 reserved bytes |
//! | 36 | u16 update_slot_nr\[64\] |
//! | 164 | u32 update_extent_nr\[64\] |
//! | 420 | u32 context\[919\] |
//!
//! All big-endian. The checksum is DRBD's CRC-32C: reflected Castagnoli polynomial, seed 0, no
//! final inversion (not the "standard" CRC-32C with ~0 seed), stored big-endian.

use super::{MdError, BLOCK_BYTES};

/// Transaction magic.
pub const AL_MAGIC: u32 = 0x69cb_65a2;
/// `transaction_type` of a normal update.
pub const AL_TR_UPDATE: u16 = 0;
/// `transaction_type` written by create-md.
pub const AL_TR_INITIALIZED: u16 = 0xffff;
/// Extent updates one transaction can carry.
pub const AL_UPDATES_PER_TRANSACTION: usize = 64;
/// Context (hot extent) slots one transaction can carry.
pub const AL_CONTEXT_PER_TRANSACTION: usize = 919;
/// An unused context slot.
pub const LC_FREE: u32 = u32::MAX;

/// DRBD's CRC-32C: seed 0, no final xor (the `crc32c` crate computes the inverted form).
pub fn drbd_crc32c(data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!0, data)
}

/// One decoded AL transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlTransaction {
    /// Transaction number; the ring slot is `tr_number % slots`.
    pub tr_number: u32,
    /// [`AL_TR_UPDATE`] or [`AL_TR_INITIALIZED`].
    pub transaction_type: u16,
    /// `(slot, extent)` changes made by this transaction (at most 64).
    pub updates: Vec<(u16, u32)>,
    /// First context slot carried.
    pub context_start_slot_nr: u16,
    /// A window of the slot-to-extent table, starting at `context_start_slot_nr`
    /// (at most 919 entries; [`LC_FREE`] for an empty slot).
    pub context: Vec<u32>,
}

impl AlTransaction {
    /// What create-md writes into every slot of the ring.
    pub fn initialized() -> AlTransaction {
        AlTransaction {
            tr_number: 0,
            transaction_type: AL_TR_INITIALIZED,
            updates: Vec::new(),
            context_start_slot_nr: 0,
            context: Vec::new(),
        }
    }

    /// Encodes the transaction with its checksum.
    pub fn encode(&self) -> [u8; BLOCK_BYTES] {
        assert!(
            self.updates.len() <= AL_UPDATES_PER_TRANSACTION,
            "too many AL updates"
        );
        assert!(
            self.context.len() <= AL_CONTEXT_PER_TRANSACTION,
            "AL context too large"
        );
        let mut b = [0u8; BLOCK_BYTES];
        b[0..4].copy_from_slice(&AL_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.tr_number.to_be_bytes());
        b[12..14].copy_from_slice(&self.transaction_type.to_be_bytes());
        let n_updates = u16::try_from(self.updates.len()).expect("asserted <= 64");
        b[14..16].copy_from_slice(&n_updates.to_be_bytes());
        let context_size = u16::try_from(self.context.len()).expect("asserted <= 919");
        b[16..18].copy_from_slice(&context_size.to_be_bytes());
        b[18..20].copy_from_slice(&self.context_start_slot_nr.to_be_bytes());
        for (i, (slot, extent)) in self.updates.iter().enumerate() {
            b[36 + 2 * i..38 + 2 * i].copy_from_slice(&slot.to_be_bytes());
            b[164 + 4 * i..168 + 4 * i].copy_from_slice(&extent.to_be_bytes());
        }
        for (i, extent) in self.context.iter().enumerate() {
            b[420 + 4 * i..424 + 4 * i].copy_from_slice(&extent.to_be_bytes());
        }
        let crc = drbd_crc32c(&b);
        b[8..12].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Decodes and checks a transaction block (magic, checksum, counts).
    pub fn decode(block: &[u8; BLOCK_BYTES]) -> Result<AlTransaction, MdError> {
        let u32_at = |o: usize| u32::from_be_bytes(block[o..o + 4].try_into().expect("4 bytes"));
        let u16_at = |o: usize| u16::from_be_bytes(block[o..o + 2].try_into().expect("2 bytes"));
        let magic = u32_at(0);
        if magic != AL_MAGIC {
            return Err(MdError::BadTransaction(format!("bad magic {magic:#010x}")));
        }
        let stored = u32_at(8);
        let mut copy = *block;
        copy[8..12].fill(0);
        let computed = drbd_crc32c(&copy);
        if stored != computed {
            return Err(MdError::BadTransaction(format!(
                "checksum {stored:#010x} does not match the data ({computed:#010x}): torn write"
            )));
        }
        let n_updates = usize::from(u16_at(14));
        let context_size = usize::from(u16_at(16));
        if n_updates > AL_UPDATES_PER_TRANSACTION || context_size > AL_CONTEXT_PER_TRANSACTION {
            return Err(MdError::BadTransaction(format!(
                "{n_updates} updates / {context_size} context entries exceed the block"
            )));
        }
        Ok(AlTransaction {
            tr_number: u32_at(4),
            transaction_type: u16_at(12),
            updates: (0..n_updates)
                .map(|i| (u16_at(36 + 2 * i), u32_at(164 + 4 * i)))
                .collect(),
            context_start_slot_nr: u16_at(18),
            context: (0..context_size).map(|i| u32_at(420 + 4 * i)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn initialized_block_matches_drbdmeta() {
        // drbdmeta 9.22 create-md writes this into all 8 slots:
        // 69cb 65a2 0000 0000 709c c651 ffff 0000, the rest zero.
        let b = AlTransaction::initialized().encode();
        assert_eq!(
            b[..16],
            [0x69, 0xcb, 0x65, 0xa2, 0, 0, 0, 0, 0x70, 0x9c, 0xc6, 0x51, 0xff, 0xff, 0, 0]
        );
        assert!(b[16..].iter().all(|&x| x == 0));
        assert_eq!(
            AlTransaction::decode(&b).unwrap(),
            AlTransaction::initialized()
        );
    }

    #[test]
    fn torn_block_is_refused() {
        let mut b = AlTransaction::initialized().encode();
        b[2000] = 1;
        let e = AlTransaction::decode(&b).unwrap_err().to_string();
        assert!(e.contains("torn write"), "{e}");
        b[0] = 0;
        assert!(AlTransaction::decode(&b)
            .unwrap_err()
            .to_string()
            .contains("bad magic"));
    }

    proptest! {
        #[test]
        fn round_trip(
            tr in any::<u32>(),
            updates in prop::collection::vec((any::<u16>(), any::<u32>()), 0..=64),
            start in any::<u16>(),
            context in prop::collection::vec(any::<u32>(), 0..=919),
        ) {
            let t = AlTransaction { tr_number: tr, transaction_type: AL_TR_UPDATE, updates, context_start_slot_nr: start, context };
            prop_assert_eq!(AlTransaction::decode(&t.encode()).unwrap(), t);
        }
    }
}
