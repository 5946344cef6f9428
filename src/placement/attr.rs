//! Range attributes: what a program tells svmem about a range of managed
//! memory (where it would like the data, which devices may touch it and how,
//! a few behaviour flags, the fault granularity), kept per page range.
//!
//! The model is AMD KFD's SVM attribute interface (`kfd_ioctl.h`, attribute
//! handling in `kfd_svm.c`); the numbering accepted by [`Attr::from_raw`] is
//! KFD's. Semantics learnt there, with the function each comes from:
//!
//! - **Defaults** (`svm_range_set_default_attributes`): no preferred and no
//!   prefetch location, granularity 9 (512 pages, 2 MiB), flags
//!   `HOST_ACCESS | COHERENT`. Access (`svm_range_new`): with XNACK (retry
//!   faults) on, every device starts with `ACCESS`; with it off, none has
//!   access until the program grants it. svmem stores "not set" as `None`
//!   and resolves it when asked ([`RangeAttrs::access`]); KFD fixes the
//!   bitmap when the range is created.
//! - **Setting** (`svm_range_set_attr`, `svm_range_add`,
//!   `svm_range_apply_attrs`): the target range is cut out of existing
//!   ranges (splitting those that straddle its edges), gaps get default
//!   attributes, and the attributes are applied as one transaction: KFD
//!   clones what it will change so that a failure leaves the originals. The
//!   three access kinds are exclusive per device: granting `ACCESS` drops
//!   `ACCESS_IN_PLACE` and the reverse, `NO_ACCESS` drops both. Set-flags
//!   are OR-ed in, clear-flags masked out. A prefetch location is only
//!   stored here; the migration it asks for is the caller's job (KFD does it
//!   in `svm_range_trigger_migration`).
//! - **Querying** (`svm_range_get_attr`): a location is reported when every
//!   sub-range agrees on it, otherwise undefined; flags are AND-ed over
//!   sub-ranges; the granularity is the smallest; a device is reported with
//!   `ACCESS` only if every sub-range grants it `ACCESS`, likewise
//!   `ACCESS_IN_PLACE`.
//!
//! Where svmem differs, on purpose:
//!
//! - Validation is stricter. KFD's `svm_range_check_attr` only checks kinds
//!   and device ids; it clamps the granularity (to 0x3f) and stores any flag
//!   bits. svmem refuses a granularity above 9 (one 2 MiB migration block is
//!   the largest unit it moves), flag bits it does not implement
//!   (`HIVE_LOCAL` 0x4, `EXT_COHERENT` 0x80, unknown bits), and two attributes
//!   of one call that contradict each other (KFD lets the later one win).
//! - Storage is canonical: a `BTreeMap` keyed by range start holds only
//!   ranges whose attributes differ from the defaults, and equal neighbours
//!   are merged. KFD keeps every range it ever created, split as needed.
//! - [`AttrMap::set`] returns the page ranges whose attributes actually
//!   changed. KFD treats a prefetch attribute as always changed (so the
//!   migration happens even if the value is the same): a caller that passed
//!   a [`Attr::PrefetchLocation`] should migrate the whole range it named,
//!   whatever `set` returns.
//! - KFD's `svm_range_check_attr` does not accept "undefined" as a prefetch
//!   location; svmem accepts it to clear a stored prefetch location.
//! - [`AttrMap::query`] counts pages without a stored range as defaults (KFD
//!   falls back to defaults only when no range overlaps at all), and says
//!   [`Common::Mixed`] where KFD would answer "undefined" (locations) or
//!   `NO_ACCESS` (devices whose access differs between sub-ranges).
//!
//! Units: `start` and `end` are page numbers (address / 4096), half-open.

use std::collections::BTreeMap;
use std::fmt;
use std::mem::size_of;

use crate::addr::MAX_DEVICES;
use crate::addr::{DeviceId, Location};
pub use crate::error::AttrError;

/// Largest granularity (log2 pages): 9 is 512 pages, one 2 MiB block.
const MAX_GRANULARITY: u8 = 9;

// KFD's attribute kinds (`enum kfd_ioctl_svm_attr_type`).
const KIND_PREFERRED_LOC: u32 = 0;
const KIND_PREFETCH_LOC: u32 = 1;
const KIND_ACCESS: u32 = 2;
const KIND_ACCESS_IN_PLACE: u32 = 3;
const KIND_NO_ACCESS: u32 = 4;
const KIND_SET_FLAGS: u32 = 5;
const KIND_CLR_FLAGS: u32 = 6;
const KIND_GRANULARITY: u32 = 7;

// KFD's special location values (`enum kfd_ioctl_svm_location`).
const LOCATION_SYSMEM: u32 = 0;
const LOCATION_UNDEFINED: u32 = 0xffff_ffff;

/// How one device may access a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum AccessMode {
    /// The device may not touch the range (KFD `NO_ACCESS`).
    None,
    /// The device may access the range, and data may migrate to its memory
    /// (KFD `ACCESS`).
    Access,
    /// The device may access the range where the data is, without pulling
    /// it into its own memory (KFD `ACCESS_IN_PLACE`).
    AccessInPlace,
}

impl AccessMode {
    fn name(self) -> &'static str {
        match self {
            AccessMode::None => "none",
            AccessMode::Access => "access",
            AccessMode::AccessInPlace => "access_in_place",
        }
    }
}

/// A set of range flags; only the flags svmem implements can be in it.
///
/// `Default` is the empty set; the default flags of a range are
/// [`AttrFlags::DEFAULT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct AttrFlags(u32);

impl AttrFlags {
    /// The CPU may access the range (KFD `HOST_ACCESS`, 0x1).
    pub const HOST_ACCESS: AttrFlags = AttrFlags(0x1);
    /// Fine-grained coherence between all devices with access (KFD
    /// `COHERENT`, 0x2).
    pub const COHERENT: AttrFlags = AttrFlags(0x2);
    /// Devices map the range without write permission (KFD `GPU_RO`, 0x8).
    pub const DEVICE_READ_ONLY: AttrFlags = AttrFlags(0x8);
    /// Devices may execute from the range (KFD `GPU_EXEC`, 0x10).
    pub const DEVICE_EXEC: AttrFlags = AttrFlags(0x10);
    /// Devices mostly read the range (KFD `GPU_READ_MOSTLY`, 0x20); see
    /// [`crate::placement::policy`] for what svmem does with the hint.
    pub const READ_MOSTLY: AttrFlags = AttrFlags(0x20);
    /// Keep device mappings valid as if retry faults were off (KFD
    /// `GPU_ALWAYS_MAPPED`, 0x40).
    pub const ALWAYS_MAPPED: AttrFlags = AttrFlags(0x40);
    /// Every flag svmem implements.
    pub const SUPPORTED: AttrFlags = AttrFlags(0x1 | 0x2 | 0x8 | 0x10 | 0x20 | 0x40);
    /// The flags of a range nobody has set anything on.
    pub const DEFAULT: AttrFlags = AttrFlags(0x1 | 0x2);

    const NAMES: [(AttrFlags, &'static str); 6] = [
        (AttrFlags::HOST_ACCESS, "host_access"),
        (AttrFlags::COHERENT, "coherent"),
        (AttrFlags::DEVICE_READ_ONLY, "device_read_only"),
        (AttrFlags::DEVICE_EXEC, "device_exec"),
        (AttrFlags::READ_MOSTLY, "read_mostly"),
        (AttrFlags::ALWAYS_MAPPED, "always_mapped"),
    ];

    /// The empty set.
    pub const fn empty() -> Self {
        AttrFlags(0)
    }

    /// The set with KFD bit values `bits`; any bit svmem does not implement
    /// is an error naming it.
    pub fn from_bits(bits: u32) -> Result<Self, AttrError> {
        let unsupported = bits & !AttrFlags::SUPPORTED.0;
        if unsupported != 0 {
            return Err(AttrError::UnsupportedFlags { bits: unsupported });
        }
        Ok(AttrFlags(bits))
    }

    /// The KFD bit values.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `o` is in `self`.
    pub fn contains(self, o: Self) -> bool {
        self.0 & o.0 == o.0
    }

    /// The flags in either.
    #[must_use]
    pub fn union(self, o: Self) -> Self {
        AttrFlags(self.0 | o.0)
    }

    /// The flags in both.
    #[must_use]
    pub fn intersection(self, o: Self) -> Self {
        AttrFlags(self.0 & o.0)
    }

    /// The flags of `self` that are not in `o`.
    #[must_use]
    pub fn difference(self, o: Self) -> Self {
        AttrFlags(self.0 & !o.0)
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for AttrFlags {
    /// The set flags joined by `|` (`host_access|coherent`), or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut rest = self.0;
        let mut first = true;
        for (flag, name) in AttrFlags::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
                rest &= !flag.0;
            }
        }
        // Unreachable through the public constructors; shown rather than hidden.
        if rest != 0 {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "{rest:#x}")?;
        }
        Ok(())
    }
}

/// One attribute of a [`AttrMap::set`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attr {
    /// Where the data should live (`None`: no preference).
    PreferredLocation(Option<Location>),
    /// Where the data should be moved now (`None`: forget a stored one). Only
    /// recorded here; the caller migrates.
    PrefetchLocation(Option<Location>),
    /// How one device may access the range.
    Access(DeviceId, AccessMode),
    /// Flags to add.
    SetFlags(AttrFlags),
    /// Flags to remove.
    ClearFlags(AttrFlags),
    /// Fault and migration granularity, log2 pages (0 = one page … 9 = 2 MiB).
    Granularity(u8),
}

impl Attr {
    /// The attribute KFD would read from a `(type, value)` pair.
    ///
    /// Kinds: 0 preferred location, 1 prefetch location, 2 access, 3 access
    /// in place, 4 no access, 5 set flags, 6 clear flags, 7 granularity.
    /// Locations: 0 is system memory, 0xffffffff undefined, `n` in 1..=8 is
    /// device `n - 1` (KFD uses GPU ids there; svmem's devices are numbered).
    /// For the three access kinds the value is the device index. Flag words
    /// (for setting and for clearing) may hold only [`AttrFlags::SUPPORTED`]
    /// bits; to clear everything but `keep`, clear
    /// `AttrFlags::SUPPORTED.difference(keep)`.
    pub fn from_raw(kind: u32, value: u32) -> Result<Attr, AttrError> {
        match kind {
            KIND_PREFERRED_LOC => Ok(Attr::PreferredLocation(raw_location(value)?)),
            KIND_PREFETCH_LOC => Ok(Attr::PrefetchLocation(raw_location(value)?)),
            KIND_ACCESS => Ok(Attr::Access(raw_device(value)?, AccessMode::Access)),
            KIND_ACCESS_IN_PLACE => Ok(Attr::Access(raw_device(value)?, AccessMode::AccessInPlace)),
            KIND_NO_ACCESS => Ok(Attr::Access(raw_device(value)?, AccessMode::None)),
            KIND_SET_FLAGS => Ok(Attr::SetFlags(AttrFlags::from_bits(value)?)),
            KIND_CLR_FLAGS => Ok(Attr::ClearFlags(AttrFlags::from_bits(value)?)),
            KIND_GRANULARITY => match u8::try_from(value) {
                Ok(g) if g <= MAX_GRANULARITY => Ok(Attr::Granularity(g)),
                _ => Err(AttrError::Granularity {
                    value: saturate_u8(value),
                }),
            },
            _ => Err(AttrError::UnknownKind { kind }),
        }
    }
}

fn saturate_u8(value: u32) -> u8 {
    u8::try_from(value).unwrap_or(u8::MAX)
}

fn raw_location(value: u32) -> Result<Option<Location>, AttrError> {
    match value {
        LOCATION_SYSMEM => Ok(Some(Location::System)),
        LOCATION_UNDEFINED => Ok(None),
        v => match u8::try_from(v - 1) {
            Ok(d) if usize::from(d) < MAX_DEVICES => Ok(Some(Location::Device(DeviceId(d)))),
            _ => Err(AttrError::UnknownLocation { value }),
        },
    }
}

fn raw_device(value: u32) -> Result<DeviceId, AttrError> {
    match u8::try_from(value) {
        Ok(d) if usize::from(d) < MAX_DEVICES => Ok(DeviceId(d)),
        // Ids above 255 cannot be held by a DeviceId; they show as dev255.
        _ => Err(AttrError::UnknownDevice {
            id: DeviceId(saturate_u8(value)),
            count: MAX_DEVICES,
        }),
    }
}

fn location_name(l: Option<Location>) -> String {
    match l {
        None => "undefined".to_string(),
        Some(l) => l.to_string(),
    }
}

/// The attributes of one page range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeAttrs {
    /// Where the data should live; `None`: no preference.
    pub preferred: Option<Location>,
    /// The last prefetch location set; `None`: none.
    pub prefetch: Option<Location>,
    /// Per device; `None` means the default, which depends on XNACK (see
    /// [`RangeAttrs::access`]).
    pub access: [Option<AccessMode>; MAX_DEVICES],
    /// The flags set on the range.
    pub flags: AttrFlags,
    /// Log2 pages (0 = one page … 9 = 2 MiB).
    pub granularity: u8,
}

impl RangeAttrs {
    /// The attributes of a range nobody has set anything on. A granularity
    /// above 9 is clamped to 9.
    pub fn defaults(granularity: u8) -> Self {
        RangeAttrs {
            preferred: None,
            prefetch: None,
            access: [None; MAX_DEVICES],
            flags: AttrFlags::DEFAULT,
            granularity: granularity.min(MAX_GRANULARITY),
        }
    }

    /// Device `d`'s access mode; an unset mode is `Access` with XNACK on and
    /// `None` with it off, as KFD's defaults. Devices beyond
    /// [`MAX_DEVICES`] read as unset.
    pub fn access(&self, d: DeviceId, xnack: bool) -> AccessMode {
        match self.access.get(usize::from(d.0)).copied().flatten() {
            Some(m) => m,
            None if xnack => AccessMode::Access,
            None => AccessMode::None,
        }
    }
}

/// A value over several sub-ranges: the one they share, or `Mixed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Common<T> {
    /// Every sub-range has this value.
    Same(T),
    /// Sub-ranges differ.
    Mixed,
}

impl<T: PartialEq> Common<T> {
    fn absorb(&mut self, v: T) {
        if matches!(self, Common::Same(c) if *c != v) {
            *self = Common::Mixed;
        }
    }
}

/// The attributes of a page range as a whole (KFD's `GET_ATTR`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttrQuery {
    /// The preferred location ([`Attr::PreferredLocation`]).
    pub preferred: Common<Option<Location>>,
    /// The last prefetch location set ([`Attr::PrefetchLocation`]).
    pub prefetch: Common<Option<Location>>,
    /// One entry per device, defaults resolved with the XNACK mode given.
    pub access: Vec<Common<AccessMode>>,
    /// The flags every sub-range has.
    pub flags: AttrFlags,
    /// The smallest granularity of any sub-range.
    pub granularity: u8,
}

impl AttrQuery {
    fn of(a: &RangeAttrs, ndevices: usize, xnack: bool) -> AttrQuery {
        AttrQuery {
            preferred: Common::Same(a.preferred),
            prefetch: Common::Same(a.prefetch),
            access: device_ids(ndevices)
                .map(|d| Common::Same(a.access(d, xnack)))
                .collect(),
            flags: a.flags,
            granularity: a.granularity,
        }
    }

    fn absorb(&mut self, a: &RangeAttrs, xnack: bool) {
        self.preferred.absorb(a.preferred);
        self.prefetch.absorb(a.prefetch);
        for (slot, d) in self.access.iter_mut().zip(device_ids(MAX_DEVICES)) {
            slot.absorb(a.access(d, xnack));
        }
        self.flags = self.flags.intersection(a.flags);
        self.granularity = self.granularity.min(a.granularity);
    }
}

/// Device ids `0..n`, `n` clamped to [`MAX_DEVICES`].
fn device_ids(n: usize) -> impl Iterator<Item = DeviceId> {
    (0..n.min(MAX_DEVICES)).filter_map(|d| u8::try_from(d).ok().map(DeviceId))
}

/// The validated, combined effect of one `set` call's attributes.
#[derive(Debug, Default)]
struct Patch {
    preferred: Option<Option<Location>>,
    prefetch: Option<Option<Location>>,
    access: [Option<AccessMode>; MAX_DEVICES],
    set: AttrFlags,
    clear: AttrFlags,
    granularity: Option<u8>,
}

impl Patch {
    /// Checks every attribute on its own, in order, then each against the
    /// ones before it.
    fn build(attrs: &[Attr], ndevices: usize) -> Result<Patch, AttrError> {
        if attrs.is_empty() {
            return Err(AttrError::NoAttributes);
        }
        let count = ndevices.min(MAX_DEVICES);
        for a in attrs {
            check_one(a, count)?;
        }
        let mut p = Patch::default();
        for a in attrs {
            match *a {
                Attr::PreferredLocation(l) => {
                    merge_one(&mut p.preferred, l, |a, b| {
                        format!(
                            "preferred location given as {} and as {}",
                            location_name(a),
                            location_name(b)
                        )
                    })?;
                }
                Attr::PrefetchLocation(l) => {
                    merge_one(&mut p.prefetch, l, |a, b| {
                        format!(
                            "prefetch location given as {} and as {}",
                            location_name(a),
                            location_name(b)
                        )
                    })?;
                }
                Attr::Access(d, m) => {
                    // check_one proved d < count <= MAX_DEVICES.
                    if let Some(slot) = p.access.get_mut(usize::from(d.0)) {
                        merge_one(slot, m, |a, b| {
                            format!("access of {d} given as {} and as {}", a.name(), b.name())
                        })?;
                    }
                }
                Attr::SetFlags(f) => {
                    let both = f.intersection(p.clear);
                    if !both.is_empty() {
                        return Err(flag_conflict(both));
                    }
                    p.set = p.set.union(f);
                }
                Attr::ClearFlags(f) => {
                    let both = f.intersection(p.set);
                    if !both.is_empty() {
                        return Err(flag_conflict(both));
                    }
                    p.clear = p.clear.union(f);
                }
                Attr::Granularity(g) => {
                    merge_one(&mut p.granularity, g, |a, b| {
                        format!("granularity given as {a} and as {b}")
                    })?;
                }
            }
        }
        Ok(p)
    }

    fn apply(&self, a: &mut RangeAttrs) {
        if let Some(l) = self.preferred {
            a.preferred = l;
        }
        if let Some(l) = self.prefetch {
            a.prefetch = l;
        }
        for (slot, m) in a.access.iter_mut().zip(self.access) {
            if m.is_some() {
                *slot = m;
            }
        }
        a.flags = a.flags.union(self.set).difference(self.clear);
        if let Some(g) = self.granularity {
            a.granularity = g;
        }
    }
}

fn check_one(a: &Attr, count: usize) -> Result<(), AttrError> {
    let device = match *a {
        Attr::PreferredLocation(Some(Location::Device(d)))
        | Attr::PrefetchLocation(Some(Location::Device(d)))
        | Attr::Access(d, _) => Some(d),
        _ => None,
    };
    if let Some(d) = device {
        if usize::from(d.0) >= count {
            return Err(AttrError::UnknownDevice { id: d, count });
        }
    }
    match *a {
        Attr::Granularity(g) if g > MAX_GRANULARITY => Err(AttrError::Granularity { value: g }),
        Attr::SetFlags(f) | Attr::ClearFlags(f) => AttrFlags::from_bits(f.bits()).map(|_| ()),
        _ => Ok(()),
    }
}

/// Records `v` in `slot`, refusing a different value already there.
fn merge_one<T: Copy + PartialEq>(
    slot: &mut Option<T>,
    v: T,
    describe: impl FnOnce(T, T) -> String,
) -> Result<(), AttrError> {
    match *slot {
        Some(old) if old != v => Err(AttrError::Conflict {
            what: describe(old, v),
        }),
        _ => {
            *slot = Some(v);
            Ok(())
        }
    }
}

fn flag_conflict(both: AttrFlags) -> AttrError {
    AttrError::Conflict {
        what: format!("flags {both} both set and cleared"),
    }
}

/// A stored range: `[key, end)` with these attributes.
#[derive(Clone, Debug)]
struct Stored {
    end: u64,
    attrs: RangeAttrs,
}

/// The attributes of every page, stored as ranges.
///
/// Invariants: stored ranges do not overlap, are not empty, never hold the
/// default attributes (a page without a stored range has the defaults), and
/// two stored ranges that touch have different attributes. So the storage
/// for a given page-to-attributes function is unique, and `get` is one
/// `BTreeMap` lookup.
#[derive(Debug)]
pub struct AttrMap {
    ranges: BTreeMap<u64, Stored>,
    defaults: RangeAttrs,
}

impl AttrMap {
    /// An empty map whose pages have the default attributes with
    /// `default_granularity` (clamped to 9).
    pub fn new(default_granularity: u8) -> Self {
        AttrMap {
            ranges: BTreeMap::new(),
            defaults: RangeAttrs::defaults(default_granularity),
        }
    }

    /// Applies `attrs` to pages [start, end) as one transaction: every attr is
    /// validated first (device ids below `ndevices` in `Access` and in
    /// locations, granularity at most 9, no two attrs of one call
    /// conflicting: the same kind with different values for the same target,
    /// or set and clear of the same flag); on any error the map is unchanged.
    /// Existing ranges that straddle the edges are split, gaps take the
    /// defaults, the attributes are applied, and equal neighbours merged.
    ///
    /// Returns the maximal page ranges `(start, end)` whose attributes
    /// changed, in order, so the caller can act (re-map, migrate). Note that a
    /// prefetch location equal to the stored one is no change; see the module
    /// docs.
    pub fn set(
        &mut self,
        start: u64,
        end: u64,
        attrs: &[Attr],
        ndevices: usize,
    ) -> Result<Vec<(u64, u64)>, AttrError> {
        if start >= end {
            return Err(AttrError::EmptyRange { start, end });
        }
        let patch = Patch::build(attrs, ndevices)?;

        let mut changed: Vec<(u64, u64)> = Vec::new();
        let mut fresh: Vec<(u64, u64, RangeAttrs)> = Vec::new();
        self.for_each_segment(start, end, |s, e, old| {
            let mut new = old.clone();
            patch.apply(&mut new);
            if new != *old {
                match changed.last_mut() {
                    Some(last) if last.1 == s => last.1 = e,
                    _ => changed.push((s, e)),
                }
            }
            match fresh.last_mut() {
                Some(last) if last.1 == s && last.2 == new => last.1 = e,
                _ => fresh.push((s, e, new)),
            }
        });
        if changed.is_empty() {
            return Ok(changed);
        }

        self.cut(start, end);
        for (s, e, attrs) in fresh {
            if attrs != self.defaults {
                self.ranges.insert(s, Stored { end: e, attrs });
            }
        }
        self.merge_at(start);
        self.merge_at(end);
        Ok(changed)
    }

    /// The attributes of [start, end) as a whole; pages without a stored range
    /// count as defaults, an empty range reads as the defaults. `ndevices` is
    /// clamped to [`MAX_DEVICES`].
    pub fn query(&self, start: u64, end: u64, ndevices: usize, xnack: bool) -> AttrQuery {
        let mut q: Option<AttrQuery> = None;
        self.for_each_segment(start, end, |_, _, a| {
            q = Some(match q.take() {
                Some(mut q) => {
                    q.absorb(a, xnack);
                    q
                }
                None => AttrQuery::of(a, ndevices, xnack),
            });
        });
        q.unwrap_or_else(|| AttrQuery::of(&self.defaults, ndevices, xnack))
    }

    /// The attributes of one page: the defaults where nothing is stored.
    pub fn get(&self, page: u64) -> RangeAttrs {
        match self.ranges.range(..=page).next_back() {
            Some((_, st)) if st.end > page => st.attrs.clone(),
            _ => self.defaults.clone(),
        }
    }

    /// Covers [start, end) exactly, in order, with `(start, end, attrs)`
    /// pieces; gaps appear as defaults. Neighbouring pieces never have equal
    /// attributes.
    pub fn segments(&self, start: u64, end: u64) -> Vec<(u64, u64, RangeAttrs)> {
        let mut out = Vec::new();
        self.for_each_segment(start, end, |s, e, a| out.push((s, e, a.clone())));
        out
    }

    /// Forgets the attributes of [start, end) (a freed region): its pages read
    /// as defaults again. Ranges straddling the edges are split.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start < end {
            self.cut(start, end);
        }
    }

    /// Moves the attributes of pages `[from, from + n)` to `[to, to + n)`
    /// (the program moved the memory with `mremap`); the old pages read as
    /// defaults, whatever `[to, to + n)` had is replaced.
    pub fn relocate(&mut self, from: u64, to: u64, n: u64) {
        if n == 0 || from == to {
            return;
        }
        let moved: Vec<_> = self
            .segments(from, from + n)
            .into_iter()
            .filter(|seg| seg.2 != self.defaults)
            .collect();
        self.cut(from, from + n);
        self.cut(to, to + n);
        for (s, e, attrs) in moved {
            self.ranges.insert(
                s - from + to,
                Stored {
                    end: e - from + to,
                    attrs,
                },
            );
        }
        self.merge_at(to);
        self.merge_at(to + n);
    }

    /// How many ranges are stored.
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }

    /// An estimate of the heap bytes the map holds: `BTreeMap` nodes of std's
    /// layout (up to 11 entries inline, a parent link, internal nodes with 12
    /// child links), assumed three quarters full.
    pub fn metadata_bytes(&self) -> u64 {
        const CAPACITY: usize = 11;
        const PER_NODE: usize = CAPACITY * 3 / 4;
        let n = self.ranges.len();
        if n == 0 {
            return 0;
        }
        let leaf = CAPACITY * (size_of::<u64>() + size_of::<Stored>()) + 2 * size_of::<usize>();
        let internal = leaf + (CAPACITY + 1) * size_of::<usize>();
        let leaves = n.div_ceil(PER_NODE);
        let mut internals = 0;
        let mut level = leaves;
        while level > 1 {
            level = level.div_ceil(PER_NODE + 1);
            internals += level;
        }
        (leaves * leaf + internals * internal) as u64
    }

    /// Calls `f` for the pieces covering [start, end), in order, gaps as
    /// defaults.
    fn for_each_segment(&self, start: u64, end: u64, mut f: impl FnMut(u64, u64, &RangeAttrs)) {
        if start >= end {
            return;
        }
        let straddling = self
            .ranges
            .range(..start)
            .next_back()
            .filter(|(_, st)| st.end > start);
        let mut pos = start;
        for (&s, st) in straddling.into_iter().chain(self.ranges.range(start..end)) {
            let s = s.max(start);
            let e = st.end.min(end);
            if s > pos {
                f(pos, s, &self.defaults);
            }
            f(s, e, &st.attrs);
            pos = e;
        }
        if pos < end {
            f(pos, end, &self.defaults);
        }
    }

    /// Removes every stored page of [start, end), splitting ranges that
    /// straddle the edges.
    fn cut(&mut self, start: u64, end: u64) {
        self.split_at(start);
        self.split_at(end);
        let inside: Vec<u64> = self.ranges.range(start..end).map(|(&k, _)| k).collect();
        for k in inside {
            self.ranges.remove(&k);
        }
    }

    /// Makes `at` a boundary: a stored range over it becomes two.
    fn split_at(&mut self, at: u64) {
        let right = match self.ranges.range_mut(..at).next_back() {
            Some((_, st)) if st.end > at => {
                let right = Stored {
                    end: st.end,
                    attrs: st.attrs.clone(),
                };
                st.end = at;
                right
            }
            _ => return,
        };
        self.ranges.insert(at, right);
    }

    /// Joins the stored ranges ending and starting at `at` if they are equal.
    fn merge_at(&mut self, at: u64) {
        let Some(right) = self.ranges.get(&at) else {
            return;
        };
        let mergeable = matches!(
            self.ranges.range(..at).next_back(),
            Some((_, left)) if left.end == at && left.attrs == right.attrs
        );
        if !mergeable {
            return;
        }
        let right_end = right.end;
        self.ranges.remove(&at);
        if let Some((_, left)) = self.ranges.range_mut(..at).next_back() {
            left.end = right_end;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DEV0: DeviceId = DeviceId(0);
    const DEV1: DeviceId = DeviceId(1);

    #[test]
    fn defaults_follow_kfd() {
        let d = RangeAttrs::defaults(9);
        assert_eq!(d.preferred, None);
        assert_eq!(d.prefetch, None);
        assert_eq!(d.flags, AttrFlags::HOST_ACCESS.union(AttrFlags::COHERENT));
        assert_eq!(d.granularity, 9);
        assert_eq!(d.access(DEV0, true), AccessMode::Access);
        assert_eq!(d.access(DEV0, false), AccessMode::None);
        assert_eq!(d.access(DeviceId(200), true), AccessMode::Access);
        assert_eq!(RangeAttrs::defaults(40).granularity, 9);
    }

    #[test]
    fn set_splits_applies_and_merges() {
        let mut m = AttrMap::new(9);
        let sys = Attr::PreferredLocation(Some(Location::System));
        assert_eq!(m.set(0, 100, &[sys], 2), Ok(vec![(0, 100)]));
        assert_eq!(m.ranges(), 1);
        // A hole in the middle splits the range in three.
        let g = Attr::Granularity(3);
        assert_eq!(m.set(40, 60, &[g], 2), Ok(vec![(40, 60)]));
        assert_eq!(m.ranges(), 3);
        assert_eq!(m.get(50).granularity, 3);
        assert_eq!(m.get(39).granularity, 9);
        // Setting the same again changes nothing.
        assert_eq!(m.set(40, 60, &[g], 2), Ok(vec![]));
        // Undoing it merges the three back into one.
        assert_eq!(
            m.set(40, 60, &[Attr::Granularity(9)], 2),
            Ok(vec![(40, 60)])
        );
        assert_eq!(m.ranges(), 1);
        // Back to defaults: nothing is stored.
        assert_eq!(
            m.set(0, 100, &[Attr::PreferredLocation(None)], 2),
            Ok(vec![(0, 100)])
        );
        assert_eq!(m.ranges(), 0);
        assert_eq!(m.metadata_bytes(), 0);
    }

    #[test]
    fn changed_ranges_skip_unchanged_parts() {
        let mut m = AttrMap::new(9);
        let ro = Attr::SetFlags(AttrFlags::DEVICE_READ_ONLY);
        m.set(10, 20, &[ro], 1).unwrap();
        assert_eq!(m.set(0, 30, &[ro], 1), Ok(vec![(0, 10), (20, 30)]));
        assert_eq!(m.ranges(), 1);
        assert_eq!(m.segments(0, 40).len(), 2);
    }

    #[test]
    fn errors_leave_the_map_unchanged() {
        let mut m = AttrMap::new(9);
        m.set(0, 10, &[Attr::Access(DEV1, AccessMode::AccessInPlace)], 2)
            .unwrap();
        let before = m.segments(0, 20);
        let bad = [
            (vec![], AttrError::NoAttributes),
            (
                vec![Attr::Access(DeviceId(2), AccessMode::Access)],
                AttrError::UnknownDevice {
                    id: DeviceId(2),
                    count: 2,
                },
            ),
            (
                vec![Attr::Granularity(10)],
                AttrError::Granularity { value: 10 },
            ),
        ];
        for (attrs, err) in bad {
            assert_eq!(m.set(0, 20, &attrs, 2), Err(err));
        }
        let conflict = [
            Attr::SetFlags(AttrFlags::COHERENT),
            Attr::ClearFlags(AttrFlags::COHERENT.union(AttrFlags::DEVICE_EXEC)),
        ];
        assert!(matches!(
            m.set(0, 20, &conflict, 2),
            Err(AttrError::Conflict { what }) if what.contains("coherent")
        ));
        assert_eq!(
            m.set(5, 5, &[Attr::Granularity(1)], 2),
            Err(AttrError::EmptyRange { start: 5, end: 5 })
        );
        assert_eq!(m.segments(0, 20), before);
    }

    #[test]
    fn query_folds_like_get_attr() {
        let mut m = AttrMap::new(9);
        m.set(
            0,
            4,
            &[
                Attr::PreferredLocation(Some(Location::Device(DEV0))),
                Attr::Granularity(2),
                Attr::SetFlags(AttrFlags::READ_MOSTLY),
                Attr::Access(DEV1, AccessMode::AccessInPlace),
            ],
            2,
        )
        .unwrap();
        let q = m.query(0, 4, 2, true);
        assert_eq!(q.preferred, Common::Same(Some(Location::Device(DEV0))));
        assert_eq!(
            q.access,
            vec![
                Common::Same(AccessMode::Access),
                Common::Same(AccessMode::AccessInPlace)
            ]
        );
        let q = m.query(2, 8, 2, true);
        assert_eq!(q.preferred, Common::Mixed);
        assert_eq!(q.prefetch, Common::Same(None));
        assert_eq!(q.flags, AttrFlags::DEFAULT);
        assert_eq!(q.granularity, 2);
        assert_eq!(q.access[0], Common::Same(AccessMode::Access));
        assert_eq!(q.access[1], Common::Mixed);
        let empty = m.query(3, 3, 1, false);
        assert_eq!(empty, AttrQuery::of(&RangeAttrs::defaults(9), 1, false));
    }

    #[test]
    fn remove_splits_at_edges() {
        let mut m = AttrMap::new(9);
        m.set(0, 10, &[Attr::Granularity(0)], 1).unwrap();
        m.remove(3, 6);
        assert_eq!(m.ranges(), 2);
        assert_eq!(m.get(2).granularity, 0);
        assert_eq!(m.get(3).granularity, 9);
        assert_eq!(m.get(6).granularity, 0);
        m.remove(6, 6);
        assert_eq!(m.ranges(), 2);
        assert!(m.metadata_bytes() > 0);
    }

    #[test]
    fn flags_display_and_bits() {
        assert_eq!(AttrFlags::DEFAULT.to_string(), "host_access|coherent");
        assert_eq!(AttrFlags::empty().to_string(), "none");
        assert_eq!(AttrFlags::SUPPORTED.bits(), 0x7b);
        assert_eq!(AttrFlags::from_bits(0x7b), Ok(AttrFlags::SUPPORTED));
        assert_eq!(
            AttrFlags::from_bits(0x85),
            Err(AttrError::UnsupportedFlags { bits: 0x84 })
        );
        let msg = AttrError::UnsupportedFlags { bits: 0x184 }.to_string();
        assert!(msg.contains("0x184") && msg.contains("hive_local|ext_coherent|unknown 0x100"));
        assert!(AttrFlags::default().is_empty());
        assert!(AttrFlags::SUPPORTED.contains(AttrFlags::READ_MOSTLY));
        assert_eq!(
            AttrFlags::SUPPORTED
                .difference(AttrFlags::DEFAULT)
                .intersection(AttrFlags::COHERENT),
            AttrFlags::empty()
        );
    }
}
