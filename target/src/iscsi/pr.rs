//! Reservations of one logical unit, pure: SPC-2 RESERVE/RELEASE(6/10) and SPC-4 persistent
//! reservations (PERSISTENT RESERVE IN/OUT: register, reserve, release, clear, preempt, all six
//! reservation types), and the conflict check every command passes before it runs.
//!
//! An I_T nexus is named by the initiator port name (`<InitiatorName>,i,0x<ISID>`); there is
//! one target port. Persist-through-power-loss is not offered (APTPL is refused), so the state
//! lives in memory.

use std::collections::BTreeMap;

use super::scsi::{op, Sense};

/// The most registrations kept (each I_T nexus registers at most once).
pub const MAX_REGISTRATIONS: usize = 256;

/// Persistent reservation types (SPC-4 Table 212).
pub mod pr_type {
    /// Write Exclusive.
    pub const WRITE_EXCLUSIVE: u8 = 1;
    /// Exclusive Access.
    pub const EXCLUSIVE_ACCESS: u8 = 3;
    /// Write Exclusive – Registrants Only.
    pub const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: u8 = 5;
    /// Exclusive Access – Registrants Only.
    pub const EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: u8 = 6;
    /// Write Exclusive – All Registrants.
    pub const WRITE_EXCLUSIVE_ALL_REGISTRANTS: u8 = 7;
    /// Exclusive Access – All Registrants.
    pub const EXCLUSIVE_ACCESS_ALL_REGISTRANTS: u8 = 8;
}

/// Why a command may not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Reservation {
    holder: String,
    kind: u8,
}

/// The reservation state of one logical unit.
#[derive(Debug, Default, Clone)]
pub struct Reservations {
    /// SPC-2 reservation holder.
    legacy: Option<String>,
    /// Registered I_T nexus -> key.
    keys: BTreeMap<String, u64>,
    reservation: Option<Reservation>,
    generation: u32,
}

fn all_registrants(kind: u8) -> bool {
    kind == pr_type::WRITE_EXCLUSIVE_ALL_REGISTRANTS
        || kind == pr_type::EXCLUSIVE_ACCESS_ALL_REGISTRANTS
}

fn valid_type(kind: u8) -> bool {
    matches!(kind, 1 | 3 | 5 | 6 | 7 | 8)
}

/// How a command touches the medium, for the conflict tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Always allowed (INQUIRY, REPORT LUNS, ...).
    Free,
    /// Reads the medium or its description.
    Read,
    /// Modifies the medium or its cache.
    Write,
}

fn classify(opcode: u8) -> Access {
    match opcode {
        op::INQUIRY
        | op::REPORT_LUNS
        | op::REQUEST_SENSE
        | op::PERSISTENT_RESERVE_IN
        | op::PERSISTENT_RESERVE_OUT
        | op::MAINTENANCE_IN
        | op::TEST_UNIT_READY
        | op::READ_CAPACITY_10
        | op::SERVICE_ACTION_IN_16
        | op::RELEASE_6
        | op::RELEASE_10 => Access::Free,
        op::READ_6
        | op::READ_10
        | op::READ_12
        | op::READ_16
        | op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::PRE_FETCH_10
        | op::PRE_FETCH_16
        | op::MODE_SENSE_6
        | op::MODE_SENSE_10
        | op::READ_DEFECT_DATA_10
        | op::READ_DEFECT_DATA_12 => Access::Read,
        _ => Access::Write,
    }
}

impl Reservations {
    /// Whether `nexus` may run a command with this opcode now.
    pub fn check(&self, nexus: &str, opcode: u8) -> Result<(), Refusal> {
        let access = classify(opcode);
        if let Some(holder) = &self.legacy {
            if holder != nexus
                && !matches!(
                    opcode,
                    op::INQUIRY
                        | op::REPORT_LUNS
                        | op::REQUEST_SENSE
                        | op::RELEASE_6
                        | op::RELEASE_10
                )
            {
                return Err(Refusal::Conflict);
            }
        }
        let Some(r) = &self.reservation else {
            return Ok(());
        };
        if access == Access::Free || self.holds(nexus) {
            return Ok(());
        }
        let registered = self.keys.contains_key(nexus);
        let conflict = match r.kind {
            pr_type::WRITE_EXCLUSIVE => access == Access::Write,
            pr_type::EXCLUSIVE_ACCESS => true,
            pr_type::WRITE_EXCLUSIVE_REGISTRANTS_ONLY
            | pr_type::WRITE_EXCLUSIVE_ALL_REGISTRANTS => !registered && access == Access::Write,
            _ => !registered,
        };
        if conflict {
            Err(Refusal::Conflict)
        } else {
            Ok(())
        }
    }

    fn holds(&self, nexus: &str) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if all_registrants(r.kind) => self.keys.contains_key(nexus),
            Some(r) => r.holder == nexus,
        }
    }

    /// RESERVE(6)/(10).
    pub fn reserve_legacy(&mut self, nexus: &str) -> Result<(), Refusal> {
        if self.reservation.is_some() || !self.keys.is_empty() {
            return Err(Refusal::Conflict);
        }
        match &self.legacy {
            Some(h) if h != nexus => Err(Refusal::Conflict),
            _ => {
                self.legacy = Some(nexus.to_string());
                Ok(())
            }
        }
    }

    /// RELEASE(6)/(10): releases only the caller's own reservation.
    pub fn release_legacy(&mut self, nexus: &str) {
        if self.legacy.as_deref() == Some(nexus) {
            self.legacy = None;
        }
    }

    /// A LUN reset or I_T nexus loss clears the SPC-2 reservation (persistent ones survive).
    pub fn reset_legacy(&mut self, nexus: Option<&str>) {
        match nexus {
            None => self.legacy = None,
            Some(n) => self.release_legacy(n),
        }
    }

    /// PERSISTENT RESERVE IN: the parameter data for `service_action`.
    pub fn persistent_reserve_in(&self, service_action: u8) -> Result<Vec<u8>, Refusal> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.generation.to_be_bytes());
        match service_action {
            0 => {
                // READ KEYS
                let len = u32::try_from(self.keys.len() * 8).expect("bounded registrations");
                out.extend_from_slice(&len.to_be_bytes());
                for k in self.keys.values() {
                    out.extend_from_slice(&k.to_be_bytes());
                }
            }
            1 => {
                // READ RESERVATION
                match &self.reservation {
                    None => out.extend_from_slice(&0u32.to_be_bytes()),
                    Some(r) => {
                        out.extend_from_slice(&16u32.to_be_bytes());
                        let key = if all_registrants(r.kind) {
                            0
                        } else {
                            self.keys.get(&r.holder).copied().unwrap_or(0)
                        };
                        out.extend_from_slice(&key.to_be_bytes());
                        out.extend_from_slice(&[0; 4]);
                        out.push(0);
                        out.push(r.kind & 0x0f);
                        out.extend_from_slice(&[0; 2]);
                    }
                }
            }
            2 => {
                // REPORT CAPABILITIES
                out.clear();
                out.extend_from_slice(&8u16.to_be_bytes());
                // ATP_C: ALL_TG_PT accepted (one target port).
                out.push(0x04);
                // TMV: the type mask is valid.
                out.push(0x80);
                out.push(0x80 | 0x40 | 0x20 | 0x08 | 0x02);
                out.push(0x01);
                out.extend_from_slice(&[0, 0]);
            }
            3 => {
                // READ FULL STATUS: one descriptor per registration with its transport ID.
                let mut list = Vec::new();
                for (nexus, key) in &self.keys {
                    let holder = self.holds(nexus) && self.reservation.is_some();
                    let mut d = Vec::new();
                    d.extend_from_slice(&key.to_be_bytes());
                    d.extend_from_slice(&[0; 4]);
                    d.push(u8::from(holder));
                    d.push(if holder {
                        self.reservation.as_ref().map_or(0, |r| r.kind & 0x0f)
                    } else {
                        0
                    });
                    d.extend_from_slice(&[0; 4]);
                    d.extend_from_slice(&1u16.to_be_bytes());
                    // iSCSI TransportID, format 01b: "<name>,i,0x<ISID>", NUL-padded to 4.
                    let mut name = nexus.as_bytes().to_vec();
                    name.push(0);
                    while name.len() % 4 != 0 {
                        name.push(0);
                    }
                    let mut tid = vec![0x45, 0];
                    tid.extend_from_slice(&u16::try_from(name.len()).unwrap_or(0).to_be_bytes());
                    tid.extend_from_slice(&name);
                    d.extend_from_slice(&u32::try_from(tid.len()).unwrap_or(0).to_be_bytes());
                    d.extend_from_slice(&tid);
                    list.extend_from_slice(&d);
                }
                out.extend_from_slice(&u32::try_from(list.len()).unwrap_or(0).to_be_bytes());
                out.extend_from_slice(&list);
            }
            _ => {
                return Err(Refusal::Check(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)));
            }
        }
        Ok(out)
    }

    /// PERSISTENT RESERVE OUT with its 24-byte parameter list.
    pub fn persistent_reserve_out(
        &mut self,
        nexus: &str,
        service_action: u8,
        scope_type: u8,
        params: &[u8],
    ) -> Result<(), Refusal> {
        if self.legacy.as_deref().is_some_and(|h| h != nexus) {
            return Err(Refusal::Conflict);
        }
        if service_action > 6 {
            return Err(Refusal::Check(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)));
        }
        if params.len() != 24 {
            return Err(Refusal::Check(Sense::PARAMETER_LIST_LENGTH_ERROR));
        }
        let key = u64::from_be_bytes(params[0..8].try_into().expect("8 bytes"));
        let sa_key = u64::from_be_bytes(params[8..16].try_into().expect("8 bytes"));
        let flags = params[20];
        if flags & 0x08 != 0 {
            // SPEC_I_PT: registering other I_T nexuses is not supported.
            return Err(Refusal::Check(
                Sense::INVALID_FIELD_IN_PARAMETER_LIST.at_parameter(20),
            ));
        }
        if flags & 0x01 != 0 {
            // APTPL: nothing persists through a power loss here.
            return Err(Refusal::Check(
                Sense::INVALID_FIELD_IN_PARAMETER_LIST.at_parameter(20),
            ));
        }
        let current = self.keys.get(nexus).copied();
        let scope = scope_type >> 4;
        let kind = scope_type & 0x0f;
        match service_action {
            0 | 6 => {
                // REGISTER / REGISTER AND IGNORE EXISTING KEY
                let ignore = service_action == 6;
                match current {
                    None => {
                        if !ignore && key != 0 {
                            return Err(Refusal::Conflict);
                        }
                        if sa_key != 0 {
                            if self.keys.len() >= MAX_REGISTRATIONS {
                                return Err(Refusal::Check(Sense::new(0x05, 0x55, 0x04)));
                            }
                            self.keys.insert(nexus.to_string(), sa_key);
                        }
                    }
                    Some(k) => {
                        if !ignore && key != k {
                            return Err(Refusal::Conflict);
                        }
                        if sa_key == 0 {
                            self.unregister(nexus);
                        } else {
                            self.keys.insert(nexus.to_string(), sa_key);
                        }
                    }
                }
                self.generation = self.generation.wrapping_add(1);
                Ok(())
            }
            1 => {
                // RESERVE
                if current != Some(key) {
                    return Err(Refusal::Conflict);
                }
                if scope != 0 {
                    return Err(Refusal::Check(Sense::INVALID_FIELD_IN_CDB.at_cdb(2)));
                }
                if !valid_type(kind) {
                    return Err(Refusal::Check(Sense::INVALID_FIELD_IN_CDB.at_cdb(2)));
                }
                match &self.reservation {
                    None => {
                        self.reservation = Some(Reservation {
                            holder: nexus.to_string(),
                            kind,
                        });
                        Ok(())
                    }
                    Some(r) if self.holds(nexus) && r.kind == kind => Ok(()),
                    Some(_) => Err(Refusal::Conflict),
                }
            }
            2 => {
                // RELEASE
                if current != Some(key) {
                    return Err(Refusal::Conflict);
                }
                let Some(r) = &self.reservation else {
                    return Ok(());
                };
                if !self.holds(nexus) {
                    return Ok(());
                }
                if scope != 0 || r.kind != kind {
                    return Err(Refusal::Check(
                        Sense::INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
                    ));
                }
                self.reservation = None;
                Ok(())
            }
            3 => {
                // CLEAR
                if current != Some(key) {
                    return Err(Refusal::Conflict);
                }
                self.keys.clear();
                self.reservation = None;
                self.generation = self.generation.wrapping_add(1);
                Ok(())
            }
            _ => {
                // PREEMPT / PREEMPT AND ABORT
                if current != Some(key) {
                    return Err(Refusal::Conflict);
                }
                if !valid_type(kind) || scope != 0 {
                    return Err(Refusal::Check(Sense::INVALID_FIELD_IN_CDB.at_cdb(2)));
                }
                match self.reservation.clone() {
                    Some(r) if all_registrants(r.kind) => {
                        if sa_key == 0 {
                            self.keys.retain(|n, _| n == nexus);
                            self.reservation = Some(Reservation {
                                holder: nexus.to_string(),
                                kind,
                            });
                        } else {
                            let before = self.keys.len();
                            self.keys.retain(|n, k| n == nexus || *k != sa_key);
                            if self.keys.len() == before {
                                return Err(Refusal::Conflict);
                            }
                        }
                    }
                    Some(r) if self.keys.get(&r.holder) == Some(&sa_key) => {
                        self.keys.retain(|n, k| n == nexus || *k != sa_key);
                        self.reservation = Some(Reservation {
                            holder: nexus.to_string(),
                            kind,
                        });
                    }
                    _ => {
                        if sa_key == 0 {
                            return Err(Refusal::Check(
                                Sense::INVALID_FIELD_IN_PARAMETER_LIST.at_parameter(8),
                            ));
                        }
                        let before = self.keys.len();
                        self.keys.retain(|n, k| n == nexus || *k != sa_key);
                        if self.keys.len() == before {
                            return Err(Refusal::Conflict);
                        }
                    }
                }
                self.generation = self.generation.wrapping_add(1);
                Ok(())
            }
        }
    }

    fn unregister(&mut self, nexus: &str) {
        self.keys.remove(nexus);
        if let Some(r) = &self.reservation {
            let gone = if all_registrants(r.kind) {
                self.keys.is_empty()
            } else {
                r.holder == nexus
            };
            if gone {
                self.reservation = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(key: u64, sa_key: u64) -> Vec<u8> {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p
    }

    #[test]
    fn register_reserve_and_conflicts_per_type() {
        for kind in [1u8, 3, 5, 6, 7, 8] {
            let mut r = Reservations::default();
            r.persistent_reserve_out("a", 0, 0, &params(0, 0xa))
                .unwrap();
            r.persistent_reserve_out("b", 0, 0, &params(0, 0xb))
                .unwrap();
            r.persistent_reserve_out("a", 1, kind, &params(0xa, 0))
                .unwrap();
            assert_eq!(r.check("a", op::WRITE_10), Ok(()));
            let registrants = matches!(kind, 5..=8);
            let exclusive_access = matches!(kind, 3 | 6 | 8);
            // b is registered.
            let b_write = r.check("b", op::WRITE_10).is_ok();
            assert_eq!(b_write, registrants, "type {kind}");
            // c is not registered.
            assert_eq!(r.check("c", op::WRITE_10), Err(Refusal::Conflict));
            assert_eq!(
                r.check("c", op::READ_10).is_ok(),
                !exclusive_access,
                "type {kind}"
            );
            assert_eq!(r.check("c", op::INQUIRY), Ok(()));
        }
    }

    #[test]
    fn wrong_key_conflicts_and_release_needs_the_type() {
        let mut r = Reservations::default();
        r.persistent_reserve_out("a", 0, 0, &params(0, 1)).unwrap();
        assert_eq!(
            r.persistent_reserve_out("a", 0, 0, &params(2, 3)),
            Err(Refusal::Conflict)
        );
        r.persistent_reserve_out("a", 1, 1, &params(1, 0)).unwrap();
        assert_eq!(
            r.persistent_reserve_out("a", 2, 3, &params(1, 0)),
            Err(Refusal::Check(
                Sense::INVALID_RELEASE_OF_PERSISTENT_RESERVATION
            ))
        );
        r.persistent_reserve_out("a", 2, 1, &params(1, 0)).unwrap();
        assert_eq!(r.persistent_reserve_in(1).unwrap()[4..8], [0, 0, 0, 0]);
    }

    #[test]
    fn preempt_takes_over_and_removes_the_victim() {
        let mut r = Reservations::default();
        r.persistent_reserve_out("a", 0, 0, &params(0, 0xa))
            .unwrap();
        r.persistent_reserve_out("b", 0, 0, &params(0, 0xb))
            .unwrap();
        r.persistent_reserve_out("a", 1, 1, &params(0xa, 0))
            .unwrap();
        r.persistent_reserve_out("b", 4, 3, &params(0xb, 0xa))
            .unwrap();
        assert_eq!(r.check("a", op::READ_10), Err(Refusal::Conflict));
        let keys = r.persistent_reserve_in(0).unwrap();
        assert_eq!(&keys[4..8], &[0, 0, 0, 8]);
        assert_eq!(&keys[8..16], &0xbu64.to_be_bytes());
        let res = r.persistent_reserve_in(1).unwrap();
        assert_eq!(res[8 + 13], 3);
    }

    #[test]
    fn clear_removes_everything_and_legacy_reservations_conflict() {
        let mut r = Reservations::default();
        r.persistent_reserve_out("a", 0, 0, &params(0, 1)).unwrap();
        r.persistent_reserve_out("a", 1, 3, &params(1, 0)).unwrap();
        r.persistent_reserve_out("a", 3, 0, &params(1, 0)).unwrap();
        assert_eq!(r.check("z", op::WRITE_10), Ok(()));
        r.reserve_legacy("a").unwrap();
        assert_eq!(r.check("b", op::READ_10), Err(Refusal::Conflict));
        assert_eq!(r.reserve_legacy("b"), Err(Refusal::Conflict));
        r.release_legacy("b");
        assert_eq!(r.check("b", op::READ_10), Err(Refusal::Conflict));
        r.reset_legacy(None);
        assert_eq!(r.check("b", op::READ_10), Ok(()));
    }

    #[test]
    fn bad_parameter_lists_are_refused() {
        let mut r = Reservations::default();
        assert_eq!(
            r.persistent_reserve_out("a", 0, 0, &[0; 23]),
            Err(Refusal::Check(Sense::PARAMETER_LIST_LENGTH_ERROR))
        );
        let mut p = params(0, 1);
        p[20] = 1;
        assert!(matches!(
            r.persistent_reserve_out("a", 0, 0, &p),
            Err(Refusal::Check(_))
        ));
    }
}
