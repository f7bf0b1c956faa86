//! A one-line progress bar on stderr, drawn only when stderr is a terminal
//! (so scripts and logs never see carriage returns). Small enough not to
//! need a crate.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const REDRAW_EVERY: Duration = Duration::from_millis(100);
const WIDTH: u64 = 30;

pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    enabled: bool,
    last_draw: Option<Instant>,
}

impl Progress {
    /// A bar for `total` bytes of work.
    pub fn new(label: impl Into<String>, total: u64) -> Progress {
        Progress {
            label: label.into(),
            total,
            done: 0,
            enabled: std::io::stderr().is_terminal(),
            last_draw: None,
        }
    }

    /// A bar that never draws (for library callers and tests).
    pub fn hidden() -> Progress {
        Progress {
            label: String::new(),
            total: 0,
            done: 0,
            enabled: false,
            last_draw: None,
        }
    }

    pub fn set_label(&mut self, label: impl Into<String>) {
        self.label = label.into();
    }

    pub fn add(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        if !self.enabled {
            return;
        }
        if self.last_draw.is_some_and(|t| t.elapsed() < REDRAW_EVERY) {
            return;
        }
        self.last_draw = Some(Instant::now());
        let frac = if self.total == 0 {
            1.0
        } else {
            (self.done as f64 / self.total as f64).min(1.0)
        };
        let filled = (frac * WIDTH as f64) as u64;
        let bar: String = (0..WIDTH)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{} [{bar}] {:>3.0}% {}/{}",
            self.label,
            frac * 100.0,
            human_bytes(self.done),
            human_bytes(self.total)
        );
        let _ = err.flush();
    }

    /// Clear the bar's line.
    pub fn finish(&mut self) {
        if self.enabled && self.last_draw.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
        self.last_draw = None;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `1.5 MiB`, `300 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
