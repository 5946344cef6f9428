//! Migration announcements: the start and end events of a migration, and
//! where a page's data lives now.

use super::migrate::{MigrateReport, Trigger};
use super::space::RegionInner;
use crate::addr::Location;
use crate::observe::events::EventKind;

/// A migration's pair of events: `MigrateStart` when made, `MigrateEnd`
/// (with what moved and an error code) from [`Announce::end`].
pub(crate) struct Announce<'a> {
    r: &'a RegionInner,
    first: usize,
    pages: u64,
    from: Location,
    to: Location,
    trigger: Trigger,
}

impl<'a> Announce<'a> {
    pub fn start(
        r: &'a RegionInner,
        first: usize,
        pages: usize,
        from: Location,
        to: Location,
        trigger: Trigger,
    ) -> Announce<'a> {
        let pages = pages as u64;
        r.notifier.events.emit_with(|| EventKind::MigrateStart {
            start: r.addr_of(first),
            pages,
            from,
            to,
            trigger,
        });
        Announce {
            r,
            first,
            pages,
            from,
            to,
            trigger,
        }
    }

    pub fn end(self, rep: &MigrateReport) {
        let a = &self;
        a.r.notifier.events.emit_with(|| EventKind::MigrateEnd {
            start: a.r.addr_of(a.first),
            pages: a.pages,
            migrated: rep.migrated,
            from: a.from,
            to: a.to,
            trigger: a.trigger,
            error: error_code(rep),
        });
    }
}

/// The errno-style code a migration-end event carries: 0 when nothing failed.
pub(crate) fn error_code(rep: &MigrateReport) -> i32 {
    if rep.rolled_back > 0 || rep.poisoned > 0 {
        libc::EIO
    } else if rep.skipped_no_device_memory > 0 {
        libc::ENOMEM
    } else if rep.skipped_busy > 0 {
        libc::EBUSY
    } else {
        0
    }
}
