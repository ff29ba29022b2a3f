//! The NodeStorage `status.capacitySequence` and the tickets the reconciler hands out with it.
//!
//! A reader (controller admission, scheduler filter) counts a `Ready` LogicalVolume as pending
//! until the node's NodeStorage carries a `capacitySequence` at least the volume's own. That is
//! safe only if every NodeStorage published with a sequence `>= N` was built from an LVM read
//! made *after* the change that got ticket `N`. The sequencer guarantees it:
//! - the publisher calls [`Sequencer::begin_pass`] *before* it reads LVM and publishes the
//!   number it gets; numbers only grow (also across restarts: the first is
//!   `max(previously published + 1, unix millis)`);
//! - the reconciler calls [`Sequencer::ticket`] *after* lvcreate/lvextend returned and writes
//!   the ticket into the LogicalVolume status. A pass that began before the ticket has a
//!   smaller number; a pass that begins after it has one at least as large and reads LVM after
//!   the change.
//!
//! A pass whose status did not change is still published while some ticket is beyond the last
//! published sequence, so that every ticket is reached by the next publish.
//!
//! **VG-only passes.** After an LV change the publisher re-reads only the changed VGs (one `vgs`
//! each) and keeps the rest of the last status. That keeps the guarantee because the changed VG
//! is recorded *with* the ticket ([`Sequencer::ticket_for`], one critical section) and drained
//! *with* the pass number ([`Sequencer::begin_vg_pass`], one critical section): a pass whose
//! number is `>= N` drained every VG whose ticket is `<= N`, or a pass before it did and re-read
//! that VG after its change. A VG-only pass that fails asks for a full pass
//! ([`Sequencer::want_full_pass`]), which re-reads everything.

use std::collections::BTreeSet;
use std::sync::Mutex;

#[derive(Debug)]
struct State {
    /// The number the next pass gets.
    next: u64,
    /// The largest ticket handed out.
    highest_ticket: u64,
    /// The largest sequence actually published.
    published: u64,
    /// VGs changed since the last pass began (re-read by the next VG-only pass).
    changed_vgs: BTreeSet<String>,
    /// Some change needs the whole claim pass (not only a VG re-read).
    full_wanted: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Sequencer {
    state: Mutex<State>,
}

impl Sequencer {
    /// A sequencer whose first pass gets `max(previous + 1, now_millis)`: strictly beyond anything
    /// a previous agent published, and (through the clock) beyond the tickets it handed out.
    pub fn starting_after(previous: Option<u64>, now_millis: u64) -> Self {
        let first = previous
            .map_or(0, |p| p.saturating_add(1))
            .max(now_millis)
            .max(1);
        Sequencer {
            state: Mutex::new(State {
                next: first,
                highest_ticket: 0,
                published: previous.unwrap_or(0),
                changed_vgs: BTreeSet::new(),
                full_wanted: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The sequence of a full publish pass about to read LVM (every VG: the recorded changes
    /// are covered and forgotten).
    pub fn begin_pass(&self) -> u64 {
        let mut s = self.lock();
        s.changed_vgs.clear();
        s.full_wanted = false;
        let n = s.next;
        s.next = n.saturating_add(1);
        n
    }

    /// The sequence of a VG-only pass and the VGs it must re-read, or `None` when no VG changed
    /// or a full pass is wanted (then [`Sequencer::begin_pass`]).
    pub fn begin_vg_pass(&self) -> Option<(u64, BTreeSet<String>)> {
        let mut s = self.lock();
        if s.full_wanted || s.changed_vgs.is_empty() {
            return None;
        }
        let vgs = std::mem::take(&mut s.changed_vgs);
        let n = s.next;
        s.next = n.saturating_add(1);
        Some((n, vgs))
    }

    /// Records that LVs of `vg` changed with no ticket (a removal: readers need none).
    pub fn vg_changed(&self, vg: &str) {
        self.lock().changed_vgs.insert(vg.to_owned());
    }

    /// Asks for a full pass (a change a VG re-read does not cover, or a VG-only pass failed).
    pub fn want_full_pass(&self) {
        self.lock().full_wanted = true;
    }

    /// Whether a full pass is wanted.
    pub fn full_pass_wanted(&self) -> bool {
        self.lock().full_wanted
    }

    /// [`Sequencer::ticket`] for a change of `vg`, recorded in the same critical section so
    /// that the pass that reaches the ticket re-reads `vg`.
    pub fn ticket_for(&self, vg: &str) -> u64 {
        let mut s = self.lock();
        s.changed_vgs.insert(vg.to_owned());
        let n = s.next;
        s.highest_ticket = s.highest_ticket.max(n);
        n
    }

    /// The sequence from which the change just made in LVM is reflected in a published status.
    pub fn ticket(&self) -> u64 {
        let mut s = self.lock();
        let n = s.next;
        s.highest_ticket = s.highest_ticket.max(n);
        n
    }

    /// Whether a pass must publish even when its status is unchanged: some ticket is still
    /// beyond what readers have seen.
    pub fn must_publish(&self) -> bool {
        let s = self.lock();
        s.highest_ticket > s.published
    }

    /// Records a successful publish of `sequence`.
    pub fn published(&self, sequence: u64) {
        let mut s = self.lock();
        s.published = s.published.max(sequence);
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_grow_and_start_beyond_the_previous_agent() {
        let s = Sequencer::starting_after(Some(5_000), 1_000);
        assert_eq!(s.begin_pass(), 5_001);
        assert_eq!(s.begin_pass(), 5_002);
        let s = Sequencer::starting_after(Some(5_000), 9_000);
        assert_eq!(s.begin_pass(), 9_000);
        let s = Sequencer::starting_after(None, 0);
        assert!(s.begin_pass() >= 1);
    }

    #[test]
    fn a_ticket_is_reached_only_by_passes_that_begin_after_it() {
        let s = Sequencer::starting_after(None, 100);
        let before = s.begin_pass();
        let t = s.ticket();
        assert!(before < t);
        let after = s.begin_pass();
        assert!(after >= t);
    }

    #[test]
    fn an_unchanged_status_is_published_while_a_ticket_is_unseen() {
        let s = Sequencer::starting_after(None, 100);
        let first = s.begin_pass();
        assert!(!s.must_publish(), "no ticket: nothing forces a publish");
        s.published(first);
        let _t = s.ticket();
        let pass = s.begin_pass();
        assert!(s.must_publish());
        s.published(pass);
        assert!(!s.must_publish());
    }

    /// The invariant readers rely on, over every interleaving of one reconciler (change LVM →
    /// ticket → write Ready) and one publisher making passes (begin → read LVM → publish): a
    /// reader that sees the volume Ready with sequence N and a NodeStorage with sequence >= N
    /// sees free bytes that already exclude the volume.
    #[test]
    fn readers_never_see_a_ready_volume_counted_twice_in_any_interleaving() {
        // Steps: reconciler r0 = lvcreate, r1 = ticket, r2 = write Ready.
        //        publisher (two passes) p0 = begin, p1 = read free, p2 = publish; twice.
        let rec = 3usize;
        let publ = 6usize;
        // Every interleaving = choice of positions for the reconciler's 3 steps among 9.
        let total = rec + publ;
        let mut checked = 0;
        for mask in 0u32..(1 << total) {
            if mask.count_ones() as usize != rec {
                continue;
            }
            const TOTAL: u64 = 100;
            const SIZE: u64 = 10;
            let seq = Sequencer::starting_after(None, 1);
            let mut lvm_free = TOTAL;
            let mut ticket = None;
            let mut lv_ready: Option<u64> = None;
            let (mut r, mut p) = (0, 0);
            let mut pass_seq = 0;
            let mut pass_free = 0;
            let mut node_storage: Option<(u64, u64)> = None; // (sequence, free)
            for i in 0..total {
                if mask & (1 << i) != 0 {
                    match r {
                        0 => lvm_free -= SIZE,
                        1 => ticket = Some(seq.ticket()),
                        _ => lv_ready = ticket,
                    }
                    r += 1;
                } else {
                    match p % 3 {
                        0 => pass_seq = seq.begin_pass(),
                        1 => pass_free = lvm_free,
                        _ => {
                            node_storage = Some((pass_seq, pass_free));
                            seq.published(pass_seq);
                        }
                    }
                    p += 1;
                }
                // The reader's view after every step.
                if let (Some(n), Some((published, free))) = (lv_ready, node_storage)
                    && published >= n
                {
                    assert_eq!(free, TOTAL - SIZE, "mask {mask:b} step {i}");
                }
            }
            checked += 1;
        }
        assert_eq!(checked, 84); // 9 choose 3
    }

    /// The same invariant with VG-only passes: the publisher re-reads only the VGs it drained
    /// and keeps the last published figures of the others; a pass that drained nothing
    /// publishes nothing.
    #[test]
    fn vg_only_passes_never_show_a_ready_volume_counted_twice() {
        let rec = 3usize;
        let publ = 6usize;
        let total = rec + publ;
        let mut checked = 0;
        for mask in 0u32..(1 << total) {
            if mask.count_ones() as usize != rec {
                continue;
            }
            const TOTAL: u64 = 100;
            const SIZE: u64 = 10;
            let seq = Sequencer::starting_after(None, 1);
            let mut lvm_free = TOTAL;
            let mut ticket = None;
            let mut lv_ready: Option<u64> = None;
            let (mut r, mut p) = (0, 0);
            let mut pass: Option<(u64, BTreeSet<String>)> = None;
            let mut pass_free = 0;
            // Published before the change by a full pass: (sequence, free of strata-ssd).
            let first = seq.begin_pass();
            let mut node_storage = (first, TOTAL);
            seq.published(first);
            for i in 0..total {
                if mask & (1 << i) != 0 {
                    match r {
                        0 => lvm_free -= SIZE,
                        1 => ticket = Some(seq.ticket_for("strata-ssd")),
                        _ => lv_ready = ticket,
                    }
                    r += 1;
                } else {
                    match p % 3 {
                        0 => pass = seq.begin_vg_pass(),
                        1 => {
                            pass_free = match &pass {
                                Some((_, vgs)) if vgs.contains("strata-ssd") => lvm_free,
                                _ => node_storage.1,
                            }
                        }
                        _ => {
                            if let Some((n, _)) = pass.take() {
                                node_storage = (n, pass_free);
                                seq.published(n);
                            }
                        }
                    }
                    p += 1;
                }
                if let Some(n) = lv_ready
                    && node_storage.0 >= n
                {
                    assert_eq!(node_storage.1, TOTAL - SIZE, "mask {mask:b} step {i}");
                }
            }
            checked += 1;
        }
        assert_eq!(checked, 84);
    }

    #[test]
    fn a_full_pass_covers_the_changed_vgs_and_a_wanted_one_comes_first() {
        let s = Sequencer::starting_after(None, 100);
        assert!(s.begin_vg_pass().is_none(), "nothing changed");
        let t = s.ticket_for("strata-nvme");
        s.vg_changed("strata-hdd");
        let (n, vgs) = s.begin_vg_pass().unwrap();
        assert!(n >= t);
        assert_eq!(
            vgs.into_iter().collect::<Vec<_>>(),
            ["strata-hdd", "strata-nvme"]
        );
        assert!(s.begin_vg_pass().is_none(), "drained");
        s.vg_changed("strata-ssd");
        s.want_full_pass();
        assert!(s.full_pass_wanted());
        assert!(s.begin_vg_pass().is_none(), "a full pass is wanted");
        let full = s.begin_pass();
        assert!(full > n);
        assert!(!s.full_pass_wanted());
        assert!(
            s.begin_vg_pass().is_none(),
            "the full pass re-read every VG"
        );
    }
}
