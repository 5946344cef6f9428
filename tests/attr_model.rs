//! `AttrMap` against a slow, obvious reference: one `RangeAttrs` per page.
//!
//! Random sequences of `set` (valid and invalid attributes) and `remove` run
//! on both; after every operation every page, every segment listing and
//! several range queries must agree, errors must leave both unchanged, and
//! the map's storage must stay canonical (touching pieces never equal).
//! Plain tests below cover `Attr::from_raw` and the error messages.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use svmem::addr::MAX_DEVICES;
use svmem::placement::attr::{
    AccessMode, Attr, AttrError, AttrFlags, AttrMap, AttrQuery, Common, RangeAttrs,
};
use svmem::{DeviceId, Location};

/// Pages the operations touch.
const PAGES: u64 = 64;
/// Pages checked: a margin past the last one operations touch.
const CHECKED: u64 = PAGES + 8;

// ---------------------------------------------------------------------------
// The reference

#[derive(Clone, Debug)]
struct Model {
    pages: Vec<RangeAttrs>,
    defaults: RangeAttrs,
}

impl Model {
    fn new(granularity: u8) -> Model {
        let defaults = RangeAttrs::defaults(granularity);
        Model {
            pages: vec![defaults.clone(); PAGES as usize],
            defaults,
        }
    }

    fn get(&self, page: u64) -> &RangeAttrs {
        self.pages.get(page as usize).unwrap_or(&self.defaults)
    }

    /// The documented validation, written out plainly: empty range, no
    /// attributes, each attribute on its own, then pairs that contradict.
    fn check(start: u64, end: u64, attrs: &[Attr], ndevices: usize) -> Result<(), AttrError> {
        if start >= end {
            return Err(AttrError::EmptyRange { start, end });
        }
        if attrs.is_empty() {
            return Err(AttrError::NoAttributes);
        }
        let count = ndevices.min(MAX_DEVICES);
        for a in attrs {
            let dev = match a {
                Attr::PreferredLocation(Some(Location::Device(d)))
                | Attr::PrefetchLocation(Some(Location::Device(d)))
                | Attr::Access(d, _) => Some(*d),
                _ => None,
            };
            if let Some(d) = dev {
                if d.0 as usize >= count {
                    return Err(AttrError::UnknownDevice { id: d, count });
                }
            }
            if let Attr::Granularity(g) = a {
                if *g > 9 {
                    return Err(AttrError::Granularity { value: *g });
                }
            }
        }
        for (j, b) in attrs.iter().enumerate() {
            for a in &attrs[..j] {
                let conflict = match (a, b) {
                    (Attr::PreferredLocation(x), Attr::PreferredLocation(y))
                    | (Attr::PrefetchLocation(x), Attr::PrefetchLocation(y)) => x != y,
                    (Attr::Access(d, x), Attr::Access(e, y)) => d == e && x != y,
                    (Attr::Granularity(x), Attr::Granularity(y)) => x != y,
                    (Attr::SetFlags(x), Attr::ClearFlags(y))
                    | (Attr::ClearFlags(x), Attr::SetFlags(y)) => x.bits() & y.bits() != 0,
                    _ => false,
                };
                if conflict {
                    return Err(AttrError::Conflict {
                        what: String::new(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Applies valid attributes page by page; returns the changed runs.
    fn set(&mut self, start: u64, end: u64, attrs: &[Attr]) -> Vec<(u64, u64)> {
        let mut changed: Vec<(u64, u64)> = Vec::new();
        for page in start..end {
            let p = &mut self.pages[page as usize];
            let before = p.clone();
            for a in attrs {
                match *a {
                    Attr::PreferredLocation(l) => p.preferred = l,
                    Attr::PrefetchLocation(l) => p.prefetch = l,
                    Attr::Access(d, m) => p.access[d.0 as usize] = Some(m),
                    Attr::SetFlags(f) => {
                        p.flags = AttrFlags::from_bits(p.flags.bits() | f.bits()).unwrap()
                    }
                    Attr::ClearFlags(f) => {
                        p.flags = AttrFlags::from_bits(p.flags.bits() & !f.bits()).unwrap()
                    }
                    Attr::Granularity(g) => p.granularity = g,
                }
            }
            if *p != before {
                match changed.last_mut() {
                    Some(run) if run.1 == page => run.1 = page + 1,
                    _ => changed.push((page, page + 1)),
                }
            }
        }
        changed
    }

    fn remove(&mut self, start: u64, end: u64) {
        for page in start..end.min(PAGES) {
            self.pages[page as usize] = self.defaults.clone();
        }
    }

    /// KFD's GET_ATTR fold over every page of [start, end), as documented.
    fn query(&self, start: u64, end: u64, ndevices: usize, xnack: bool) -> AttrQuery {
        let pages: Vec<&RangeAttrs> = if start < end {
            (start..end).map(|p| self.get(p)).collect()
        } else {
            vec![&self.defaults]
        };
        fn common<T: PartialEq + Copy>(vals: impl Iterator<Item = T>) -> Common<T> {
            let vals: Vec<T> = vals.collect();
            if vals.iter().all(|v| *v == vals[0]) {
                Common::Same(vals[0])
            } else {
                Common::Mixed
            }
        }
        AttrQuery {
            preferred: common(pages.iter().map(|p| p.preferred)),
            prefetch: common(pages.iter().map(|p| p.prefetch)),
            access: (0..ndevices.min(MAX_DEVICES))
                .map(|d| common(pages.iter().map(|p| p.access(DeviceId(d as u8), xnack))))
                .collect(),
            flags: AttrFlags::from_bits(pages.iter().fold(u32::MAX, |f, p| f & p.flags.bits()))
                .unwrap(),
            granularity: pages.iter().map(|p| p.granularity).min().unwrap(),
        }
    }
}

// ---------------------------------------------------------------------------
// Generators: device ids up to 9 and granularities up to 12 so that some
// attributes are invalid; small value domains so that calls conflict and
// neighbours often become equal (exercising merges).

fn location() -> impl Strategy<Value = Option<Location>> {
    prop_oneof![
        Just(None),
        Just(Some(Location::System)),
        (0u8..10).prop_map(|d| Some(Location::Device(DeviceId(d)))),
    ]
}

fn mode() -> impl Strategy<Value = AccessMode> {
    prop_oneof![
        Just(AccessMode::None),
        Just(AccessMode::Access),
        Just(AccessMode::AccessInPlace),
    ]
}

fn flags() -> impl Strategy<Value = AttrFlags> {
    (0u32..0x80).prop_map(|b| AttrFlags::from_bits(b & AttrFlags::SUPPORTED.bits()).unwrap())
}

fn attr() -> impl Strategy<Value = Attr> {
    prop_oneof![
        location().prop_map(Attr::PreferredLocation),
        location().prop_map(Attr::PrefetchLocation),
        (0u8..10, mode()).prop_map(|(d, m)| Attr::Access(DeviceId(d), m)),
        flags().prop_map(Attr::SetFlags),
        flags().prop_map(Attr::ClearFlags),
        (0u8..13).prop_map(Attr::Granularity),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Set {
        start: u64,
        end: u64,
        attrs: Vec<Attr>,
    },
    Remove {
        start: u64,
        end: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let attrs = prop_oneof![
        1 => Just(Vec::new()),
        12 => prop::collection::vec(attr(), 1..=3),
    ];
    prop_oneof![
        4 => (0..=PAGES, 0..=PAGES, attrs).prop_map(|(start, end, attrs)| Op::Set { start, end, attrs }),
        1 => (0..=PAGES, 0..=PAGES).prop_map(|(start, end)| Op::Remove { start, end }),
    ]
}

// ---------------------------------------------------------------------------
// The comparison

/// `segs` covers [start, end) exactly, in order, agrees with the model, and
/// touching pieces differ.
fn check_segments(
    segs: &[(u64, u64, RangeAttrs)],
    model: &Model,
    start: u64,
    end: u64,
) -> Result<(), TestCaseError> {
    if start >= end {
        prop_assert!(segs.is_empty());
        return Ok(());
    }
    let mut pos = start;
    for (i, (s, e, a)) in segs.iter().enumerate() {
        prop_assert_eq!(*s, pos, "piece {} starts at {} not {}", i, s, pos);
        prop_assert!(s < e, "empty piece {}..{}", s, e);
        for page in *s..*e {
            prop_assert_eq!(a, model.get(page), "page {} in piece {}..{}", page, s, e);
        }
        if i > 0 {
            prop_assert_ne!(&segs[i - 1].2, a, "unmerged neighbours at {}", s);
        }
        pos = *e;
    }
    prop_assert_eq!(pos, end);
    Ok(())
}

fn check(
    map: &AttrMap,
    model: &Model,
    ndevices: usize,
    xnack: bool,
    windows: &[(u64, u64)],
) -> Result<(), TestCaseError> {
    for page in 0..CHECKED {
        prop_assert_eq!(&map.get(page), model.get(page), "page {}", page);
    }
    let all = map.segments(0, CHECKED);
    check_segments(&all, model, 0, CHECKED)?;
    // Canonical storage: exactly the non-default pieces are stored.
    let stored = all.iter().filter(|(_, _, a)| *a != model.defaults).count();
    prop_assert_eq!(map.ranges(), stored);
    prop_assert_eq!(map.metadata_bytes() == 0, stored == 0);
    for &(a, b) in windows {
        check_segments(&map.segments(a, b), model, a, b)?;
        prop_assert_eq!(
            map.query(a, b, ndevices, xnack),
            model.query(a, b, ndevices, xnack),
            "query {}..{}",
            a,
            b
        );
        prop_assert_eq!(
            map.query(a, b, MAX_DEVICES, !xnack),
            model.query(a, b, MAX_DEVICES, !xnack),
            "query {}..{} all devices, xnack {}",
            a,
            b,
            !xnack
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn attr_map_matches_per_page_model(
        ndevices in 1usize..=MAX_DEVICES,
        granularity in 0u8..=9,
        xnack in any::<bool>(),
        ops in prop::collection::vec(op(), 1..40),
        windows in prop::collection::vec((0..=CHECKED, 0..=CHECKED), 6),
    ) {
        let mut map = AttrMap::new(granularity);
        let mut model = Model::new(granularity);
        for op in ops {
            match op {
                Op::Set { start, end, attrs } => {
                    let got = map.set(start, end, &attrs, ndevices);
                    match Model::check(start, end, &attrs, ndevices) {
                        Err(AttrError::Conflict { .. }) => {
                            prop_assert!(
                                matches!(got, Err(AttrError::Conflict { .. })),
                                "{:?} on {:?}", got, attrs
                            );
                        }
                        Err(want) => prop_assert_eq!(got, Err(want)),
                        Ok(()) => {
                            let changed = model.set(start, end, &attrs);
                            prop_assert_eq!(got, Ok(changed));
                        }
                    }
                }
                Op::Remove { start, end } => {
                    map.remove(start, end);
                    model.remove(start, end);
                }
            }
            check(&map, &model, ndevices, xnack, &windows)?;
        }
    }
}

// ---------------------------------------------------------------------------
// Attr::from_raw: KFD numbering

fn dev(d: u8) -> Location {
    Location::Device(DeviceId(d))
}

#[test]
fn from_raw_reads_every_kind() {
    use Attr::*;
    let ok = [
        ((0, 0), PreferredLocation(Some(Location::System))),
        ((0, 0xffff_ffff), PreferredLocation(None)),
        ((0, 1), PreferredLocation(Some(dev(0)))),
        ((0, 8), PreferredLocation(Some(dev(7)))),
        ((1, 0), PrefetchLocation(Some(Location::System))),
        ((1, 3), PrefetchLocation(Some(dev(2)))),
        ((1, 0xffff_ffff), PrefetchLocation(None)),
        ((2, 5), Access(DeviceId(5), AccessMode::Access)),
        ((3, 0), Access(DeviceId(0), AccessMode::AccessInPlace)),
        ((4, 7), Access(DeviceId(7), AccessMode::None)),
        ((5, 0x3), SetFlags(AttrFlags::DEFAULT)),
        ((5, 0x7b), SetFlags(AttrFlags::SUPPORTED)),
        ((5, 0), SetFlags(AttrFlags::empty())),
        (
            (6, 0x48),
            ClearFlags(AttrFlags::DEVICE_READ_ONLY.union(AttrFlags::ALWAYS_MAPPED)),
        ),
        (
            (6, 0x30),
            ClearFlags(AttrFlags::DEVICE_EXEC.union(AttrFlags::READ_MOSTLY)),
        ),
        ((7, 0), Granularity(0)),
        ((7, 9), Granularity(9)),
    ];
    for ((kind, value), want) in ok {
        assert_eq!(
            Attr::from_raw(kind, value),
            Ok(want),
            "kind {kind} value {value:#x}"
        );
    }
}

#[test]
fn from_raw_refuses_bad_kinds_locations_devices_flags() {
    let bad = [
        ((8, 0), AttrError::UnknownKind { kind: 8 }),
        ((u32::MAX, 0), AttrError::UnknownKind { kind: u32::MAX }),
        ((0, 9), AttrError::UnknownLocation { value: 9 }),
        (
            (1, 0xffff_fffe),
            AttrError::UnknownLocation { value: 0xffff_fffe },
        ),
        (
            (2, 8),
            AttrError::UnknownDevice {
                id: DeviceId(8),
                count: MAX_DEVICES,
            },
        ),
        (
            (4, 300),
            AttrError::UnknownDevice {
                id: DeviceId(255),
                count: MAX_DEVICES,
            },
        ),
        ((5, 0x4), AttrError::UnsupportedFlags { bits: 0x4 }),
        ((5, 0x83), AttrError::UnsupportedFlags { bits: 0x80 }),
        (
            (6, 0xffff_ffff),
            AttrError::UnsupportedFlags { bits: 0xffff_ff84 },
        ),
        ((7, 10), AttrError::Granularity { value: 10 }),
        ((7, 1000), AttrError::Granularity { value: 255 }),
    ];
    for ((kind, value), want) in bad {
        assert_eq!(
            Attr::from_raw(kind, value),
            Err(want),
            "kind {kind} value {value:#x}"
        );
    }
}

#[test]
fn raw_attributes_drive_the_map() {
    // A KFD-style call: prefer device 1 (raw 2), let device 0 access in place,
    // mark read-only, granularity 4.
    let raw = [(0, 2), (3, 0), (5, 0x8), (7, 4)];
    let attrs: Vec<Attr> = raw
        .iter()
        .map(|&(k, v)| Attr::from_raw(k, v))
        .collect::<Result<_, _>>()
        .unwrap();
    let mut map = AttrMap::new(9);
    assert_eq!(map.set(16, 48, &attrs, 2), Ok(vec![(16, 48)]));
    let q = map.query(16, 48, 2, false);
    assert_eq!(q.preferred, Common::Same(Some(dev(1))));
    assert_eq!(
        q.access,
        vec![
            Common::Same(AccessMode::AccessInPlace),
            Common::Same(AccessMode::None)
        ]
    );
    assert_eq!(
        q.flags,
        AttrFlags::DEFAULT.union(AttrFlags::DEVICE_READ_ONLY)
    );
    assert_eq!(q.granularity, 4);
    // With only one device, the same call names an unknown device.
    let mut small = AttrMap::new(9);
    assert_eq!(
        small.set(16, 48, &attrs, 1),
        Err(AttrError::UnknownDevice {
            id: DeviceId(1),
            count: 1
        })
    );
    assert_eq!(small.ranges(), 0);
}

// ---------------------------------------------------------------------------
// Error messages carry the values and say what is allowed

#[test]
fn error_messages_carry_values() {
    let cases = [
        (AttrError::NoAttributes, vec!["at least one"]),
        (
            AttrError::EmptyRange {
                start: 0x50,
                end: 0x40,
            },
            vec!["0x50", "0x40"],
        ),
        (
            AttrError::UnknownDevice {
                id: DeviceId(3),
                count: 2,
            },
            vec!["dev3", "2 device", "below 2"],
        ),
        (AttrError::Granularity { value: 12 }, vec!["12", "0", "9"]),
        (
            AttrError::UnknownKind { kind: 42 },
            vec!["42", "7 (granularity)"],
        ),
        (
            AttrError::UnknownLocation { value: 0x1234 },
            vec!["0x1234", "0xffffffff", "1 to 8"],
        ),
        (
            AttrError::UnsupportedFlags { bits: 0x84 },
            vec!["0x84", "hive_local", "ext_coherent", "read_mostly (0x20)"],
        ),
    ];
    for (err, needles) in cases {
        let msg = err.to_string();
        for n in needles {
            assert!(msg.contains(n), "{msg:?} lacks {n:?}");
        }
    }
}

#[test]
fn conflict_messages_name_both_values() {
    let mut map = AttrMap::new(9);
    let cases: [(Vec<Attr>, &[&str]); 5] = [
        (
            vec![
                Attr::PreferredLocation(Some(dev(0))),
                Attr::PreferredLocation(Some(Location::System)),
            ],
            &["preferred", "dev0", "system"],
        ),
        (
            vec![
                Attr::PrefetchLocation(None),
                Attr::PrefetchLocation(Some(dev(1))),
            ],
            &["prefetch", "undefined", "dev1"],
        ),
        (
            vec![
                Attr::Access(DeviceId(1), AccessMode::Access),
                Attr::Granularity(3),
                Attr::Access(DeviceId(1), AccessMode::None),
            ],
            &["dev1", "access", "none"],
        ),
        (
            vec![Attr::Granularity(3), Attr::Granularity(5)],
            &["3", "5"],
        ),
        (
            vec![
                Attr::ClearFlags(AttrFlags::HOST_ACCESS.union(AttrFlags::DEVICE_EXEC)),
                Attr::SetFlags(AttrFlags::DEVICE_EXEC),
            ],
            &["device_exec", "set and cleared"],
        ),
    ];
    for (attrs, needles) in cases {
        let err = map.set(0, 4, &attrs, 2).unwrap_err();
        assert!(matches!(err, AttrError::Conflict { .. }), "{err:?}");
        let msg = err.to_string();
        for n in needles {
            assert!(msg.contains(n), "{msg:?} lacks {n:?}");
        }
    }
    // Repeating an attribute with the same value is no conflict.
    let same = [Attr::Granularity(3), Attr::Granularity(3)];
    assert_eq!(map.set(0, 4, &same, 2), Ok(vec![(0, 4)]));
}
