//! The activity log: the set of 4 MiB extents that writes may touch right now.
//!
//! A write may only start once every extent it touches is active; activating a cold extent
//! costs one 4 KiB transaction written to the AL ring (and made stable) first. After a crash,
//! replaying the ring gives the extents that may hold writes the peer never saw, and only those
//! are resynced, not the whole disk. Evicting an extent drops it from the log, so its bitmap
//! bits must be on disk before the transaction that evicts it.
//!
//! Transactions follow DRBD 8.4's format ([`crate::md::al`]): each carries the slot changes it
//! makes and a rotating window of the whole slot table, so the newest ring-full of transactions
//! always describes every slot.

use std::collections::HashMap;

use crate::md::al::{
    AlTransaction, AL_CONTEXT_PER_TRANSACTION, AL_TR_UPDATE, AL_UPDATES_PER_TRANSACTION, LC_FREE,
};

/// Bytes per extent.
pub const EXTENT_BYTES: u64 = 4 << 20;

/// The extents a byte range touches.
pub fn extents(offset: u64, len: u64) -> std::ops::RangeInclusive<u32> {
    let first = u32::try_from(offset / EXTENT_BYTES).expect("disks below 16 PiB");
    let last = u32::try_from((offset + len.max(1) - 1) / EXTENT_BYTES).expect("disks below 16 PiB");
    first..=last
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    slot: usize,
    refs: u32,
    last_use: u64,
}

/// The in-memory activity log.
#[derive(Debug)]
pub struct ActivityLog {
    slots: Vec<u32>,
    active: HashMap<u32, Entry>,
    wanted: Vec<u32>,
    next_tr: u32,
    context_start: usize,
    clock: u64,
    in_flight: Option<Vec<(usize, u32)>>,
}

impl ActivityLog {
    /// An empty log of `al_extents` slots.
    pub fn new(al_extents: u32) -> ActivityLog {
        ActivityLog {
            slots: vec![LC_FREE; al_extents as usize],
            active: HashMap::new(),
            wanted: Vec::new(),
            next_tr: 1,
            context_start: 0,
            clock: 0,
            in_flight: None,
        }
    }

    /// Takes references on every extent of the range if all are active; otherwise asks for
    /// the missing ones and takes nothing.
    pub fn try_get(&mut self, offset: u64, len: u64) -> bool {
        self.clock += 1;
        let missing: Vec<u32> = extents(offset, len)
            .filter(|e| !self.active.contains_key(e))
            .collect();
        if !missing.is_empty() {
            let activating = |e: &u32| {
                self.in_flight
                    .as_ref()
                    .is_some_and(|u| u.iter().any(|(_, x)| x == e))
            };
            for e in missing {
                // An extent the transaction in flight activates is not wanted again (it
                // would take a second slot that nothing ever frees).
                if !self.wanted.contains(&e) && !activating(&e) {
                    self.wanted.push(e);
                }
            }
            return false;
        }
        for e in extents(offset, len) {
            let entry = self.active.get_mut(&e).expect("checked active");
            entry.refs += 1;
            entry.last_use = self.clock;
        }
        true
    }

    /// One more reference on the extents of a range that [`ActivityLog::try_get`] made
    /// active and still holds (a replicated write keeps its extents hot until the peer has it
    /// on stable storage).
    pub fn hold(&mut self, offset: u64, len: u64) {
        for e in extents(offset, len) {
            if let Some(entry) = self.active.get_mut(&e) {
                entry.refs += 1;
            }
        }
    }

    /// Drops the references [`ActivityLog::try_get`] took.
    pub fn put(&mut self, offset: u64, len: u64) {
        for e in extents(offset, len) {
            if let Some(entry) = self.active.get_mut(&e) {
                entry.refs = entry.refs.saturating_sub(1);
            }
        }
    }

    /// True while a transaction is being written.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The next transaction to write, if extents are wanted and slots can be found for some
    /// of them. The second value is true when it evicts extents (write the bitmap first).
    pub fn next_transaction(&mut self) -> Option<(u32, AlTransaction, bool)> {
        if self.in_flight.is_some() || self.wanted.is_empty() {
            return None;
        }
        let mut updates: Vec<(usize, u32)> = Vec::new();
        let mut evicts = false;
        let mut taken: Vec<usize> = Vec::new();
        // Extents that became active meanwhile need nothing.
        let active = &self.active;
        self.wanted.retain(|e| !active.contains_key(e));
        while updates.len() < AL_UPDATES_PER_TRANSACTION && !self.wanted.is_empty() {
            let free =
                (0..self.slots.len()).find(|&s| self.slots[s] == LC_FREE && !taken.contains(&s));
            let slot = match free {
                Some(s) => s,
                None => {
                    // Evict the least recently used extent nobody is writing to.
                    let victim = self
                        .active
                        .iter()
                        .filter(|(_, en)| en.refs == 0 && !taken.contains(&en.slot))
                        .min_by_key(|(_, en)| en.last_use)
                        .map(|(&e, en)| (e, en.slot));
                    let Some((e, slot)) = victim else { break };
                    self.active.remove(&e);
                    evicts = true;
                    slot
                }
            };
            let extent = self.wanted.remove(0);
            taken.push(slot);
            updates.push((slot, extent));
        }
        if updates.is_empty() {
            return None;
        }
        let mut table = self.slots.clone();
        for &(slot, e) in &updates {
            table[slot] = e;
        }
        let start = self.context_start;
        let n = AL_CONTEXT_PER_TRANSACTION.min(table.len());
        let context: Vec<u32> = (0..n).map(|i| table[(start + i) % table.len()]).collect();
        self.context_start = (start + n) % table.len().max(1);
        let tr = AlTransaction {
            tr_number: self.next_tr,
            transaction_type: AL_TR_UPDATE,
            updates: updates
                .iter()
                .map(|&(s, e)| (u16::try_from(s).expect("al-extents <= 6433"), e))
                .collect(),
            context_start_slot_nr: u16::try_from(start).expect("al-extents <= 6433"),
            context,
        };
        let nr = self.next_tr;
        self.next_tr = self.next_tr.wrapping_add(1);
        self.in_flight = Some(updates);
        Some((nr, tr, evicts))
    }

    /// The transaction is stable: its extents are active.
    pub fn committed(&mut self) {
        let Some(updates) = self.in_flight.take() else {
            return;
        };
        for (slot, e) in updates {
            self.slots[slot] = e;
            self.active.insert(
                e,
                Entry {
                    slot,
                    refs: 0,
                    last_use: self.clock,
                },
            );
        }
    }

    /// Extents that have writes waiting for activation.
    pub fn waiting(&self) -> bool {
        !self.wanted.is_empty()
    }
}

/// Replays AL ring blocks (any order) and returns the extents that may be hot: the ones the
/// newest transactions left in the slot table. Blocks that are torn, initialized or not
/// transactions are skipped.
pub fn recover(blocks: &[[u8; crate::md::BLOCK_BYTES]], al_extents: u32) -> Vec<u32> {
    let mut txs: Vec<AlTransaction> = blocks
        .iter()
        .filter_map(|b| AlTransaction::decode(b).ok())
        .filter(|t| t.transaction_type == AL_TR_UPDATE)
        .collect();
    txs.sort_by_key(|t| t.tr_number);
    let mut table = vec![LC_FREE; al_extents as usize];
    for t in &txs {
        for (i, &e) in t.context.iter().enumerate() {
            let slot = (usize::from(t.context_start_slot_nr) + i) % table.len().max(1);
            table[slot] = e;
        }
        for &(slot, e) in &t.updates {
            if let Some(s) = table.get_mut(usize::from(slot)) {
                *s = e;
            }
        }
    }
    let mut hot: Vec<u32> = table.into_iter().filter(|&e| e != LC_FREE).collect();
    hot.sort_unstable();
    hot.dedup();
    hot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_eviction_and_recovery() {
        let mut al = ActivityLog::new(7);
        let mut ring: Vec<[u8; 4096]> = vec![AlTransaction::initialized().encode(); 8];
        let write = |al: &mut ActivityLog, ring: &mut Vec<[u8; 4096]>| {
            let (nr, tr, evicts) = al.next_transaction().expect("a transaction");
            ring[(nr % 8) as usize] = tr.encode();
            al.committed();
            evicts
        };
        // Two extents wanted by one write spanning a boundary.
        assert!(!al.try_get(EXTENT_BYTES - 512, 1024));
        assert!(!write(&mut al, &mut ring));
        assert!(al.try_get(EXTENT_BYTES - 512, 1024));
        al.put(EXTENT_BYTES - 512, 1024);
        for e in 2..7u64 {
            assert!(!al.try_get(e * EXTENT_BYTES, 4096));
        }
        assert!(!write(&mut al, &mut ring), "5 more fit in 7 slots");
        assert_eq!(recover(&ring, 7), vec![0, 1, 2, 3, 4, 5, 6]);
        // An 8th extent evicts the least recently used idle one (extent 0 or 1).
        assert!(!al.try_get(100 * EXTENT_BYTES, 4096));
        assert!(write(&mut al, &mut ring));
        let hot = recover(&ring, 7);
        assert!(hot.contains(&100) && hot.len() == 7, "{hot:?}");
        // A torn newest transaction is ignored; what it would activate never started.
        let mut torn = ring.clone();
        let newest = (0..8)
            .max_by_key(|&i| {
                AlTransaction::decode(&torn[i])
                    .map(|t| t.tr_number)
                    .unwrap_or(0)
            })
            .unwrap();
        torn[newest][3000] ^= 1;
        assert!(!recover(&torn, 7).contains(&100));
    }

    #[test]
    fn busy_extents_are_not_evicted() {
        let mut al = ActivityLog::new(7);
        for e in 0..7u64 {
            al.try_get(e * EXTENT_BYTES, 4096);
        }
        al.next_transaction().unwrap();
        al.committed();
        for e in 0..7u64 {
            assert!(al.try_get(e * EXTENT_BYTES, 4096));
        }
        assert!(!al.try_get(9 * EXTENT_BYTES, 4096));
        assert!(al.next_transaction().is_none(), "every slot is in use");
        al.put(3 * EXTENT_BYTES, 4096);
        let (_, tr, evicts) = al.next_transaction().unwrap();
        assert!(evicts);
        assert_eq!(tr.updates, vec![(3, 9)], "the idle extent's slot is reused");
    }

    #[test]
    fn large_logs_rotate_their_context_window() {
        let mut al = ActivityLog::new(1237);
        let mut ring: Vec<[u8; 4096]> = vec![AlTransaction::initialized().encode(); 8];
        for e in 0..300u64 {
            al.try_get(e * EXTENT_BYTES, 4096);
            if let Some((nr, tr, _)) = al.next_transaction() {
                ring[(nr % 8) as usize] = tr.encode();
                al.committed();
            }
        }
        let hot = recover(&ring, 1237);
        assert_eq!(hot.len(), 300, "the last 8 transactions cover every slot");
    }
}
