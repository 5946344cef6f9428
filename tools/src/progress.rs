//! Progress bars on stderr for steps that take more than about a second.
//!
//! Off unless the command line turns them on ([`enable`]), which it does only
//! when stderr is a terminal and the output is not JSON; off, every bar is
//! hidden and costs nothing to update.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static ON: AtomicBool = AtomicBool::new(false);

/// Turns bars on or off for the rest of the process.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Whether bars are drawn.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Whether bars should be drawn for a command: stderr is a terminal and the
/// output is not JSON.
pub fn wanted(json: bool) -> bool {
    use std::io::IsTerminal;
    !json && std::io::stderr().is_terminal()
}

/// A bar of `len` steps, `what` before it; hidden when bars are off.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
    {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_prefix(what.to_string());
    b.enable_steady_tick(Duration::from_millis(200));
    b
}

/// A spinner for a step of unknown length; hidden when bars are off.
pub fn spinner(what: &str) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} {msg} ({elapsed})") {
        b.set_style(style);
    }
    b.set_prefix(what.to_string());
    b.enable_steady_tick(Duration::from_millis(100));
    b
}
