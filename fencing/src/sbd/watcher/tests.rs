use super::*;
use crate::sbd::format::{NodeName, SectorSize, Uuid};

const T: Timeouts = Timeouts {
    watchdog_s: 5,
    allocate_s: 2,
    loop_s: 1,
    msgwait_s: 10,
};
const IO: Duration = Duration::from_secs(3);

fn s(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

fn header() -> Header {
    Header::new(SectorSize::S512, T, Uuid([7; 16]))
}

fn me() -> Slot {
    Slot::InUse(NodeName::new("alpha").unwrap())
}

fn ok(cmd: Command) -> DiskReport {
    DiskReport::Read {
        header: header(),
        slot: me(),
        mailbox: Mailbox {
            cmd,
            from: (cmd != Command::Clear).then(|| NodeName::new("beta").unwrap()),
        },
    }
}

fn watcher(disks: usize) -> Watcher {
    Watcher::new(vec![Some((header(), me())); disks], IO, s(0.0)).unwrap()
}

fn fed(actions: &[Action]) -> bool {
    actions.contains(&Action::Feed)
}

fn fenced(actions: &[Action]) -> Option<&FenceReason> {
    actions.iter().find_map(|a| match a {
        Action::Fence(r) => Some(r),
        _ => None,
    })
}

// --- the timeout rules ---

#[test]
fn msgwait_must_be_twice_the_watchdog() {
    assert_eq!(check_timeouts(&T), Ok(()));
    let exact = Timeouts {
        msgwait_s: 10,
        watchdog_s: 5,
        ..T
    };
    assert_eq!(check_timeouts(&exact), Ok(()));
    let short = Timeouts { msgwait_s: 9, ..T };
    assert_eq!(
        check_timeouts(&short),
        Err(TimeoutError::MsgwaitTooShort {
            msgwait_s: 9,
            watchdog_s: 5
        })
    );
    assert_eq!(
        short.msgwait_s, 9,
        "sbd's own -1 5 -4 9 would be accepted by sbd; tandem refuses it"
    );
    // No overflow on absurd values.
    let huge = Timeouts {
        watchdog_s: u32::MAX,
        msgwait_s: u32::MAX,
        ..T
    };
    assert!(check_timeouts(&huge).is_err());
}

#[test]
fn zero_timeouts_are_refused() {
    for t in [
        Timeouts { watchdog_s: 0, ..T },
        Timeouts { loop_s: 0, ..T },
        Timeouts { msgwait_s: 0, ..T },
    ] {
        assert!(matches!(check_timeouts(&t), Err(TimeoutError::Zero { .. })));
    }
}

#[test]
fn msgwait_must_cover_watchdog_loop_and_io() {
    // sbd's defaults: 5 + 1 + 3 = 9 <= 10.
    assert_eq!(check_watch_timing(&T, IO), Ok(()));
    assert_eq!(check_watch_timing(&T, s(4.0)), Ok(()));
    assert!(matches!(
        check_watch_timing(&T, s(4.5)),
        Err(TimeoutError::MsgwaitBelowDetection { .. })
    ));
    // The test timeouts: -1 1 -4 3 with a 1 s I/O timeout, but not with sbd's 3 s.
    let quick = Timeouts {
        watchdog_s: 1,
        loop_s: 1,
        msgwait_s: 3,
        ..T
    };
    assert_eq!(check_watch_timing(&quick, s(1.0)), Ok(()));
    assert!(check_watch_timing(&quick, IO).is_err());
    // And the watcher will not start on a disk that breaks it.
    assert!(Watcher::new(vec![Some((header(), me()))], s(5.0), s(0.0)).is_err());
}

#[test]
fn devices_must_agree_on_timeouts() {
    let mut other = header();
    other.timeouts.msgwait_s = 12;
    assert!(matches!(
        Watcher::new(
            vec![Some((header(), me())), Some((other, me()))],
            IO,
            s(0.0)
        ),
        Err(StartError::Timeouts(TimeoutError::Inconsistent { .. }))
    ));
    assert!(check_consistent("d", &T, &T).is_ok());
}

// --- quorum ---

#[test]
fn quorum_rules_match_sbd() {
    // Reading: one of one or two is enough; more than half of three.
    assert!(quorum_read(1, 1) && !quorum_read(0, 1));
    assert!(quorum_read(1, 2) && !quorum_read(0, 2));
    assert!(quorum_read(2, 3) && !quorum_read(1, 3));
    // Writing: always more than half.
    assert!(quorum_write(1, 1));
    assert!(quorum_write(2, 2) && !quorum_write(1, 2));
    assert!(quorum_write(2, 3) && !quorum_write(1, 3));
}

// --- I/O timeouts and disk health ---

#[test]
fn feeds_while_healthy() {
    let mut w = watcher(1);
    for i in 1..=20 {
        let now = s(f64::from(i));
        assert!(w.on_report(0, now, ok(Command::Clear)).is_empty());
        assert!(fed(&w.tick(now)));
    }
    assert_eq!(w.state(), State::Running);
}

#[test]
fn disk_healthy_until_io_plus_loop_passed() {
    let mut w = watcher(1);
    w.on_report(0, s(10.0), ok(Command::Clear));
    // Window is io 3 + loop 1 = 4 s after the last good read.
    assert!(fed(&w.tick(s(13.9))));
    let a = w.tick(s(14.0));
    assert!(!fed(&a), "{a:?}");
    assert!(a.iter().any(|x| matches!(x, Action::Warn(_))));
    // Failed reads do not refresh health; the same failure again is not logged again.
    assert_eq!(
        w.on_report(0, s(14.5), DiskReport::Failed("I/O timeout".into()))
            .len(),
        1
    );
    assert!(w
        .on_report(0, s(14.6), DiskReport::Failed("I/O timeout".into()))
        .is_empty());
    assert!(!fed(&w.tick(s(15.0))));
    // A good read before the watchdog fired: feeding resumes.
    w.on_report(0, s(16.0), ok(Command::Clear));
    assert!(fed(&w.tick(s(16.0))));
    assert_eq!(w.state(), State::Running);
}

#[test]
fn storage_lost_past_watchdog_timeout_fences() {
    let mut w = watcher(1);
    w.on_report(0, s(1.0), ok(Command::Clear));
    assert!(fed(&w.tick(s(4.9)))); // last feed 4.9
    assert!(!fed(&w.tick(s(5.0)))); // unhealthy from 5.0
    assert!(fenced(&w.tick(s(9.8))).is_none()); // 4.9 s since the feed: not yet
    let a = w.tick(s(9.95));
    assert_eq!(
        fenced(&a),
        Some(&FenceReason::StorageLost {
            healthy: 0,
            disks: 1
        })
    );
    assert_eq!(w.state(), State::Fenced);
    // Once fenced, even good reads never feed again.
    assert!(w.on_report(0, s(10.0), ok(Command::Clear)).is_empty());
    assert!(w.tick(s(10.0)).is_empty());
}

#[test]
fn changed_header_or_slot_is_not_a_good_read() {
    let mut w = watcher(1);
    let mut h = header();
    h.uuid = Uuid([8; 16]);
    let changed = DiskReport::Read {
        header: h,
        slot: me(),
        mailbox: Mailbox::EMPTY,
    };
    assert!(matches!(
        w.on_report(0, s(2.0), changed)[0],
        Action::Warn(_)
    ));
    let moved = DiskReport::Read {
        header: header(),
        slot: Slot::InUse(NodeName::new("gamma").unwrap()),
        mailbox: Mailbox::EMPTY,
    };
    assert!(matches!(w.on_report(0, s(3.0), moved)[0], Action::Warn(_)));
    assert!(!fed(&w.tick(s(4.0))), "last good read was at start-up, 0 s");
}

#[test]
fn two_disks_one_is_enough() {
    let mut w = watcher(2);
    for i in 1..=10 {
        w.on_report(0, s(f64::from(i)), ok(Command::Clear));
        w.on_report(1, s(f64::from(i)), DiskReport::Failed("gone".into()));
        assert!(fed(&w.tick(s(f64::from(i)))));
    }
}

#[test]
fn three_disks_need_two() {
    let mut w = watcher(3);
    for i in 1..=3 {
        let now = s(f64::from(i));
        w.on_report(0, now, ok(Command::Clear));
        w.on_report(1, now, ok(Command::Clear));
        assert!(fed(&w.tick(now)));
    }
    // Disk 1 goes away too: only disk 0 left, 1 of 3 is no quorum.
    for i in 4..=20 {
        let now = s(f64::from(i));
        w.on_report(0, now, ok(Command::Clear));
        let a = w.tick(now);
        if now < s(7.0) {
            assert!(fed(&a), "disk 1 still within its window at {now:?}");
        } else {
            assert!(!fed(&a), "{now:?}");
        }
        if fenced(&a).is_some() {
            // Last feed at 6 s; fenced once more than 5 s have passed.
            assert!(now > s(11.0));
            return;
        }
    }
    panic!("never fenced");
}

#[test]
fn starts_with_a_majority_and_adopts_late_disks() {
    let up = Some((header(), me()));
    // Two of three started: enough; one of three: not.
    let mut w = Watcher::new(vec![up.clone(), None, up.clone()], IO, s(0.0)).unwrap();
    assert_eq!(
        Watcher::new(vec![up.clone(), None, None], IO, s(0.0)).unwrap_err(),
        StartError::NoQuorum {
            started: 1,
            disks: 3,
            needed: 2
        }
    );
    assert!(
        Watcher::new(vec![up.clone(), None], IO, s(0.0)).is_ok(),
        "one of two is enough"
    );
    assert!(Watcher::new(vec![None], IO, s(0.0)).is_err());
    // Reads from a disk that has not started are ignored.
    assert!(matches!(
        w.on_report(1, s(1.0), ok(Command::Reset))[0],
        Action::Warn(_)
    ));
    assert_eq!(w.state(), State::Running);
    // Disk 1 starts late; then disk 0 goes away: 1 and 2 still make a majority.
    w.on_started(1, s(2.0), header(), me());
    for i in 3..=20 {
        let now = s(f64::from(i));
        w.on_report(1, now, ok(Command::Clear));
        w.on_report(2, now, ok(Command::Clear));
        assert!(fed(&w.tick(now)), "{now:?}");
    }
    // A late disk with other timeouts is not used.
    let mut w = Watcher::new(vec![up.clone(), None, up], IO, s(0.0)).unwrap();
    let mut other = header();
    other.timeouts.msgwait_s = 20;
    assert!(matches!(
        w.on_started(1, s(1.0), other, me())[0],
        Action::Warn(_)
    ));
    assert!(matches!(
        w.on_report(1, s(1.0), ok(Command::Reset))[0],
        Action::Warn(_)
    ));
    assert_eq!(w.state(), State::Running);
}

// --- messages ---

#[test]
fn poison_pills_fence() {
    for cmd in [Command::Reset, Command::Off, Command::Crashdump] {
        let mut w = watcher(1);
        let a = w.on_report(0, s(1.0), ok(cmd));
        assert_eq!(
            a,
            vec![Action::Fence(FenceReason::Message {
                cmd,
                from: "beta".into(),
                disk: 0
            })]
        );
        assert_eq!(w.state(), State::Fenced);
        assert!(w.tick(s(1.0)).is_empty(), "no feeding after a pill");
    }
}

#[test]
fn one_disk_with_a_pill_is_enough() {
    let mut w = watcher(3);
    w.on_report(0, s(1.0), ok(Command::Clear));
    w.on_report(1, s(1.0), ok(Command::Clear));
    assert!(fenced(&w.on_report(2, s(1.0), ok(Command::Off))).is_some());
}

#[test]
fn test_is_acknowledged() {
    let mut w = watcher(2);
    let a = w.on_report(1, s(1.0), ok(Command::Test));
    assert!(a.iter().any(|x| matches!(
        x,
        Action::ClearMailbox { disk: 1, seen } if seen.cmd == Command::Test
    )));
    assert!(fed(&w.tick(s(1.0))));
    assert_eq!(w.state(), State::Running);
}

#[test]
fn unknown_command_is_cleared_as_sbd_does() {
    let mut w = watcher(1);
    let a = w.on_report(0, s(1.0), ok(Command::Undefined(42)));
    assert!(a.iter().any(|x| matches!(
        x,
        Action::ClearMailbox { disk: 0, seen } if seen.cmd == Command::Undefined(42)
    )));
    assert_eq!(w.state(), State::Running);
}

#[test]
fn exit_stops_cleanly() {
    let mut w = watcher(1);
    assert_eq!(
        w.on_report(0, s(1.0), ok(Command::Exit)),
        vec![Action::Exit { disk: 0 }]
    );
    assert_eq!(w.state(), State::Exiting);
    assert!(
        w.tick(s(100.0)).is_empty(),
        "exiting: no fencing, no feeding"
    );
}

#[test]
fn start_mode() {
    let pill = Mailbox {
        cmd: Command::Reset,
        from: None,
    };
    let exit = Mailbox {
        cmd: Command::Exit,
        from: None,
    };
    assert_eq!(may_start(StartMode::Always, &pill), Ok(()));
    assert_eq!(may_start(StartMode::CleanOnly, &pill), Err(Command::Reset));
    assert_eq!(may_start(StartMode::CleanOnly, &exit), Ok(()));
    assert_eq!(may_start(StartMode::CleanOnly, &Mailbox::EMPTY), Ok(()));
}

// --- inside a cluster manager (clusterd) ---

#[test]
fn may_feed_is_disks_or_a_healthy_cluster() {
    assert!(may_feed(true, false));
    assert!(may_feed(true, true));
    assert!(may_feed(false, true));
    assert!(!may_feed(false, false));
}

#[test]
fn disks_lost_while_the_cluster_is_healthy_keeps_feeding() {
    let mut w = watcher(1);
    w.on_report(0, s(1.0), ok(Command::Clear));
    // The disk goes away at 1 s; the cluster keeps reporting healthy every 100 ms.
    let mut warned = false;
    for i in 10..=300 {
        let now = s(f64::from(i) / 10.0);
        w.on_cluster(now, true);
        let a = w.tick(now);
        assert!(fed(&a), "at {now:?}: {a:?}");
        warned |= a
            .iter()
            .any(|x| matches!(x, Action::Warn(t) if t.contains("still feeding")));
    }
    assert!(warned, "the switch to the cluster's word is logged");
    assert_eq!(w.state(), State::Running);
}

#[test]
fn disks_and_cluster_lost_fences_within_the_watchdog_timeout() {
    let mut w = watcher(1);
    w.on_report(0, s(1.0), ok(Command::Clear));
    w.on_cluster(s(6.0), true);
    assert!(fed(&w.tick(s(6.0))), "disk gone since 5 s, cluster healthy");
    // The peer goes: quorum lost.
    w.on_cluster(s(6.1), false);
    let a = w.tick(s(6.1));
    assert!(!fed(&a), "{a:?}");
    assert!(
        fenced(&w.tick(s(11.0))).is_none(),
        "5 s since the last feed: not yet"
    );
    w.on_cluster(s(11.2), false);
    assert_eq!(
        fenced(&w.tick(s(11.2))),
        Some(&FenceReason::StorageAndClusterLost {
            healthy: 0,
            disks: 1
        })
    );
    assert_eq!(w.state(), State::Fenced);
    // Quorum back after the fence: too late, never fed again.
    w.on_cluster(s(11.3), true);
    assert!(w.tick(s(11.3)).is_empty());
}

#[test]
fn a_cluster_that_stops_reporting_counts_as_unhealthy() {
    let mut w = watcher(1);
    w.on_report(0, s(1.0), ok(Command::Clear));
    w.on_cluster(s(6.0), true);
    assert!(fed(&w.tick(s(6.0))));
    // No report since 6 s: healthy for one health window (io 3 + loop 1 = 4 s).
    assert!(fed(&w.tick(s(9.9))));
    assert!(!fed(&w.tick(s(10.0))));
    assert!(fenced(&w.tick(s(15.0))).is_some());
}

#[test]
fn a_pill_fences_even_when_the_cluster_is_healthy() {
    let mut w = watcher(1);
    w.on_cluster(s(1.0), true);
    let a = w.on_report(0, s(1.0), ok(Command::Reset));
    assert!(fenced(&a).is_some());
    w.on_cluster(s(1.1), true);
    assert!(w.tick(s(1.1)).is_empty(), "no feeding after a pill");
}

#[test]
fn with_the_disks_readable_an_unhealthy_cluster_does_not_fence() {
    let mut w = watcher(1);
    for i in 1..=20 {
        let now = s(f64::from(i));
        w.on_report(0, now, ok(Command::Clear));
        w.on_cluster(now, false);
        assert!(fed(&w.tick(now)));
    }
}
