//! The placement policy: when a device faults on a page, where should the
//! data be served from?
//!
//! A [`PlacementPolicy`] sees the fault (device, address, kind of access),
//! where the data is now, the range's attributes ([`crate::placement::attr`]) and which
//! device memories the faulting device can reach, and returns a [`Decision`].
//! It decides only; the caller migrates and maps.
//!
//! # The built-in rules ([`KfdPolicy`])
//!
//! They follow KFD's GPU fault path: `svm_range_restore_pages` (permission
//! check, then migrate to the best location and map) and the choice of the
//! best location in `svm_range_best_restore_location`. Evaluated in order; the
//! first that applies decides.
//!
//! 1. **Read-only.** A write or atomic to a region the CPU mapping does not
//!    allow writes to, or to a range with [`AttrFlags::DEVICE_READ_ONLY`],
//!    fails with [`FailReason::ReadOnly`]. (`svm_range_restore_pages` refuses
//!    a fault the VMA's permissions do not allow; KFD maps a `GPU_RO` range
//!    without write permission in `svm_range_get_pte_flags`.)
//! 2. **No access.** If the device's access mode is [`AccessMode::None`]
//!    (explicitly, or by default with XNACK off) the fault fails with
//!    [`FailReason::NoAccess`]. KFD fails such a fault too, when
//!    `svm_range_best_restore_location` finds no location; unlike KFD, svmem
//!    checks access before the preferred location, so a device without access
//!    is refused even when the range prefers its memory or system memory.
//! 3. **Read-mostly.** A read of data in system memory on a range with
//!    [`AttrFlags::READ_MOSTLY`] is served in place ([`Decision::MapInPlace`]).
//!    KFD defines the flag (`GPU_READ_MOSTLY`) as a hint and does not act on
//!    it in the fault path; this is svmem's reading of the hint: no
//!    duplication of pages, reads are served where the data is, and writes
//!    (which the hint says are rare) fall through to the rules below.
//! 4. **Preferred: system memory.** Data on a device migrates to system
//!    memory; data in system memory is mapped in place.
//! 5. **Preferred: the faulting device.** The data migrates to it, or is
//!    mapped in place if already there.
//! 6. **Preferred: another device the faulting device can reach** (its bit
//!    in [`PolicyInput::reachable`]; KFD's test is "same XGMI hive"). The data
//!    migrates to the preferred device, or is mapped in place if already
//!    there. A preferred device it cannot reach is ignored, as in KFD.
//! 7. **Access mode `Access`.** The data migrates to the faulting device, or
//!    is mapped in place if already there.
//! 8. **Access mode `AccessInPlace`.** Data in system memory, or in the memory
//!    of a device the faulting device can reach, is mapped in place; data in
//!    unreachable device memory migrates to system memory.
//!
//! 9. **Thrashing.** When rules 5–7 would migrate data from system memory to
//!    the faulting device, but the device evicted that block less than
//!    [`THRASH_WINDOW_MS`] ago ([`PolicyInput::thrashing`]), the data is
//!    mapped in place instead: a working set larger than device memory keeps
//!    a stable resident part on the device and reaches the rest remotely,
//!    rather than evicting and refetching every block on every pass. This
//!    is svmem's rule, after NVIDIA UVM's thrashing mitigation (which pins
//!    thrashing pages where they are and maps them remotely); KFD has none.
//!
//! KFD runs this path only with XNACK (retry faults) on; svmem consults the
//! policy on every device fault and uses `xnack` only to resolve default
//! access modes.
//!
//! # What the caller does with the decision
//!
//! If a migration to device memory fails (the device is out of memory, the
//! copy fails), the caller falls back to mapping system memory, migrating the
//! data back first if it is in another device's memory. KFD does the same in
//! `svm_range_restore_pages`. The policy does not model device capacity.

use std::fmt;

use crate::addr::AccessKind;
use crate::addr::{DeviceId, Location, VirtAddr};
pub use crate::error::FailReason;
use crate::placement::attr::{AccessMode, AttrFlags, RangeAttrs};

/// Everything a policy may look at to decide one device fault.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInput<'a> {
    /// The faulting device.
    pub dev: DeviceId,
    /// The faulting address.
    pub addr: VirtAddr,
    /// What the faulting access wanted to do.
    pub kind: AccessKind,
    /// Where the data is now; untouched pages are `System`.
    pub resident: Location,
    /// The attributes of the range holding `addr`.
    pub attrs: &'a RangeAttrs,
    /// Whether retry faults are on (resolves default access modes).
    pub xnack: bool,
    /// Whether the managed region allows writes.
    pub region_writable: bool,
    /// Bitmask of the devices whose memory `dev` can access directly; its own
    /// bit is always set.
    pub reachable: u8,
    /// The block holding `addr` was evicted from `dev`'s memory less than
    /// [`THRASH_WINDOW_MS`] ago: migrating it back would likely evict
    /// another block the device is still using.
    pub thrashing: bool,
}

/// How recent an eviction makes a fault on the evicted block count as
/// thrashing (rule 9).
pub const THRASH_WINDOW_MS: u64 = 1000;

impl PolicyInput<'_> {
    /// Whether `dev` can access device `d`'s memory directly.
    fn reaches(&self, d: DeviceId) -> bool {
        1u8.checked_shl(u32::from(d.0))
            .is_some_and(|bit| self.reachable & bit != 0)
    }

    /// Migrate to `d`, unless the data is already there.
    fn serve_on(&self, d: DeviceId) -> Decision {
        if self.resident == Location::Device(d) {
            Decision::MapInPlace
        } else {
            Decision::MigrateToDevice(d)
        }
    }
}

/// What to do about a device fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Decision {
    /// Move the data into this device's memory, then map it there.
    MigrateToDevice(DeviceId),
    /// Move the data into system memory, then map it there.
    MigrateToSystem,
    /// Map the data where it is.
    MapInPlace,
    /// Refuse the access.
    Fail(FailReason),
}

/// Decides where a faulting device's data should be. Implementations must be
/// cheap and pure: they run on the fault path, under the block's lock.
pub trait PlacementPolicy: Send + Sync + fmt::Debug {
    /// A short name for logs and reports.
    fn name(&self) -> &str;
    /// The decision for one fault.
    fn decide(&self, input: &PolicyInput<'_>) -> Decision;
}

/// The built-in policy: KFD's fault rules, listed in the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct KfdPolicy;

impl PlacementPolicy for KfdPolicy {
    fn name(&self) -> &str {
        "kfd"
    }

    fn decide(&self, i: &PolicyInput<'_>) -> Decision {
        match self.decide_placement(i) {
            // 9. Thrashing.
            Decision::MigrateToDevice(d)
                if d == i.dev && i.thrashing && i.resident == Location::System =>
            {
                Decision::MapInPlace
            }
            other => other,
        }
    }
}

impl KfdPolicy {
    /// Rules 1-8.
    fn decide_placement(&self, i: &PolicyInput<'_>) -> Decision {
        // 1. Read-only.
        let read_only = !i.region_writable || i.attrs.flags.contains(AttrFlags::DEVICE_READ_ONLY);
        if i.kind >= AccessKind::Write && read_only {
            return Decision::Fail(FailReason::ReadOnly);
        }
        // 2. No access.
        let mode = i.attrs.access(i.dev, i.xnack);
        if mode == AccessMode::None {
            return Decision::Fail(FailReason::NoAccess);
        }
        // 3. Read-mostly.
        if i.kind == AccessKind::Read
            && i.attrs.flags.contains(AttrFlags::READ_MOSTLY)
            && i.resident == Location::System
        {
            return Decision::MapInPlace;
        }
        // 4.-6. Preferred location.
        match i.attrs.preferred {
            Some(Location::System) => {
                return match i.resident {
                    Location::Device(_) => Decision::MigrateToSystem,
                    Location::System => Decision::MapInPlace,
                };
            }
            Some(Location::Device(p)) if p == i.dev => return i.serve_on(p),
            Some(Location::Device(p)) if i.reaches(p) => return i.serve_on(p),
            _ => {}
        }
        // 7.-8. Access mode.
        match mode {
            AccessMode::Access => i.serve_on(i.dev),
            AccessMode::AccessInPlace => match i.resident {
                Location::System => Decision::MapInPlace,
                Location::Device(q) if i.reaches(q) => Decision::MapInPlace,
                Location::Device(_) => Decision::MigrateToSystem,
            },
            AccessMode::None => Decision::Fail(FailReason::NoAccess),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV0: DeviceId = DeviceId(0);
    const DEV1: DeviceId = DeviceId(1);
    const DEV2: DeviceId = DeviceId(2);
    const ON0: Location = Location::Device(DEV0);
    const ON1: Location = Location::Device(DEV1);
    const ON2: Location = Location::Device(DEV2);

    /// dev0 faults; it reaches dev1's memory but not dev2's.
    fn decide(kind: AccessKind, resident: Location, attrs: &RangeAttrs) -> Decision {
        decide_with(kind, resident, attrs, true, true)
    }

    fn decide_with(
        kind: AccessKind,
        resident: Location,
        attrs: &RangeAttrs,
        xnack: bool,
        region_writable: bool,
    ) -> Decision {
        KfdPolicy.decide(&PolicyInput {
            dev: DEV0,
            addr: VirtAddr(0x7f00_0000_0000),
            kind,
            resident,
            attrs,
            xnack,
            region_writable,
            reachable: 0b011,
            thrashing: false,
        })
    }

    fn attrs() -> RangeAttrs {
        RangeAttrs::defaults(9)
    }

    fn with_mode(mode: AccessMode) -> RangeAttrs {
        let mut a = attrs();
        a.access[0] = Some(mode);
        a
    }

    fn preferring(l: Location) -> RangeAttrs {
        let mut a = attrs();
        a.preferred = Some(l);
        a
    }

    use AccessKind::{Atomic, Read, Write};
    use Decision::{Fail, MapInPlace, MigrateToDevice, MigrateToSystem};
    use Location::System;

    #[test]
    fn access_kind_orders_by_strength() {
        assert!(Atomic > Write && Write > Read);
        assert_eq!([Atomic, Read, Write].iter().max(), Some(&Atomic));
    }

    #[test]
    fn rule1_writes_to_read_only_fail() {
        let a = attrs();
        assert_eq!(
            decide_with(Write, System, &a, true, false),
            Fail(FailReason::ReadOnly)
        );
        assert_eq!(
            decide_with(Atomic, ON0, &a, true, false),
            Fail(FailReason::ReadOnly)
        );
        let mut ro = attrs();
        ro.flags = ro.flags.union(AttrFlags::DEVICE_READ_ONLY);
        assert_eq!(decide(Atomic, System, &ro), Fail(FailReason::ReadOnly));
        assert_eq!(decide(Write, ON0, &ro), Fail(FailReason::ReadOnly));
        // Reads are fine, and read-only beats no-access.
        assert_eq!(decide(Read, System, &ro), MigrateToDevice(DEV0));
        assert_eq!(
            decide_with(Read, System, &a, true, false),
            MigrateToDevice(DEV0)
        );
        assert_eq!(
            decide_with(Write, System, &a, false, false),
            Fail(FailReason::ReadOnly)
        );
    }

    #[test]
    fn rule2_no_access_fails_before_preferences() {
        assert_eq!(
            decide(Read, System, &with_mode(AccessMode::None)),
            Fail(FailReason::NoAccess)
        );
        // The default mode is none with XNACK off, access with it on.
        assert_eq!(
            decide_with(Read, System, &attrs(), false, true),
            Fail(FailReason::NoAccess)
        );
        assert_eq!(
            decide_with(Read, System, &attrs(), true, true),
            MigrateToDevice(DEV0)
        );
        let mut a = preferring(ON0);
        a.access[0] = Some(AccessMode::None);
        assert_eq!(decide(Write, System, &a), Fail(FailReason::NoAccess));
        let mut a = preferring(System);
        a.flags = a.flags.union(AttrFlags::READ_MOSTLY);
        assert_eq!(
            decide_with(Read, System, &a, false, true),
            Fail(FailReason::NoAccess)
        );
    }

    #[test]
    fn rule3_read_mostly_reads_in_place() {
        let mut a = attrs();
        a.flags = a.flags.union(AttrFlags::READ_MOSTLY);
        assert_eq!(decide(Read, System, &a), MapInPlace);
        // Even against a preference for the faulting device.
        a.preferred = Some(ON0);
        assert_eq!(decide(Read, System, &a), MapInPlace);
        // Writes and data already on a device go on to the other rules.
        assert_eq!(decide(Write, System, &a), MigrateToDevice(DEV0));
        assert_eq!(decide(Read, ON1, &a), MigrateToDevice(DEV0));
    }

    #[test]
    fn rule4_preferred_system() {
        let a = preferring(System);
        assert_eq!(decide(Read, ON0, &a), MigrateToSystem);
        assert_eq!(decide(Write, ON2, &a), MigrateToSystem);
        assert_eq!(decide(Atomic, System, &a), MapInPlace);
    }

    #[test]
    fn rule5_preferred_faulting_device() {
        let a = preferring(ON0);
        assert_eq!(decide(Read, System, &a), MigrateToDevice(DEV0));
        assert_eq!(decide(Write, ON2, &a), MigrateToDevice(DEV0));
        assert_eq!(decide(Write, ON0, &a), MapInPlace);
        // Even with mode AccessInPlace, as KFD: the preference comes first.
        let mut a = a;
        a.access[0] = Some(AccessMode::AccessInPlace);
        assert_eq!(decide(Read, System, &a), MigrateToDevice(DEV0));
    }

    #[test]
    fn rule6_preferred_reachable_device() {
        let a = preferring(ON1);
        assert_eq!(decide(Read, System, &a), MigrateToDevice(DEV1));
        assert_eq!(decide(Read, ON2, &a), MigrateToDevice(DEV1));
        assert_eq!(decide(Write, ON1, &a), MapInPlace);
        // An unreachable preference is ignored: mode Access decides.
        let a = preferring(ON2);
        assert_eq!(decide(Read, System, &a), MigrateToDevice(DEV0));
        let mut a = preferring(Location::Device(DeviceId(200)));
        assert_eq!(decide(Read, ON0, &a), MapInPlace);
        a.access[0] = Some(AccessMode::AccessInPlace);
        assert_eq!(decide(Read, System, &a), MapInPlace);
    }

    #[test]
    fn rule7_access_migrates_to_the_faulting_device() {
        let a = with_mode(AccessMode::Access);
        assert_eq!(decide(Read, System, &a), MigrateToDevice(DEV0));
        assert_eq!(decide(Write, ON1, &a), MigrateToDevice(DEV0));
        assert_eq!(decide(Atomic, ON2, &a), MigrateToDevice(DEV0));
        assert_eq!(decide(Atomic, ON0, &a), MapInPlace);
    }

    #[test]
    fn rule8_access_in_place() {
        let a = with_mode(AccessMode::AccessInPlace);
        assert_eq!(decide(Write, System, &a), MapInPlace);
        assert_eq!(decide(Write, ON0, &a), MapInPlace);
        assert_eq!(decide(Read, ON1, &a), MapInPlace);
        assert_eq!(decide(Read, ON2, &a), MigrateToSystem);
        // A device id too large for the mask is unreachable, not a panic.
        assert_eq!(
            decide(Read, Location::Device(DeviceId(9)), &a),
            MigrateToSystem
        );
    }

    #[test]
    fn fail_reasons_read_well() {
        assert!(FailReason::NoAccess.to_string().contains("no access"));
        assert!(FailReason::ReadOnly.to_string().contains("read-only"));
        assert!(FailReason::Unreachable.to_string().contains("cannot reach"));
    }

    #[test]
    fn policy_is_object_safe_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<KfdPolicy>();
        send_sync::<Box<dyn PlacementPolicy>>();
        let p: Box<dyn PlacementPolicy> = Box::new(KfdPolicy);
        assert_eq!(p.name(), "kfd");
        let a = attrs();
        let input = PolicyInput {
            dev: DEV1,
            addr: VirtAddr(0x1000),
            kind: Read,
            resident: System,
            attrs: &a,
            xnack: true,
            region_writable: true,
            reachable: 0b010,
            thrashing: false,
        };
        assert_eq!(p.decide(&input), MigrateToDevice(DEV1));
        // Rule 9: the same fault on a block the device just evicted.
        let thrashing = PolicyInput {
            thrashing: true,
            ..input
        };
        assert_eq!(p.decide(&thrashing), MapInPlace);
        let on_other = PolicyInput {
            resident: Location::Device(DEV0),
            reachable: 0b011,
            ..thrashing
        };
        assert_eq!(
            p.decide(&on_other),
            MigrateToDevice(DEV1),
            "rule 9 only keeps data in system memory"
        );
        let shared: std::sync::Arc<dyn PlacementPolicy> = std::sync::Arc::new(KfdPolicy);
        assert!(format!("{shared:?}").contains("KfdPolicy"));
    }
}
