//! Progress display: indicatif bars on a terminal, a log line every 10 seconds otherwise,
//! nothing with `--progress never`. The engine reports through its `Progress` trait.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pgcairn_engine::progress::Progress;

use crate::args::ProgressMode;

/// The binary's progress reporter.
#[derive(Debug)]
pub struct Reporter {
    mode: Mode,
    read: AtomicU64,
    stored: AtomicU64,
    total: AtomicU64,
    phase: Mutex<String>,
    last_line: Mutex<Instant>,
}

#[derive(Debug)]
enum Mode {
    Bar(ProgressBar),
    Lines,
    Quiet,
}

impl Reporter {
    /// Chooses bars, lines or nothing.
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Never => Mode::Quiet,
            ProgressMode::Always => Mode::Bar(bar()),
            ProgressMode::Auto if std::io::stderr().is_terminal() => Mode::Bar(bar()),
            ProgressMode::Auto => Mode::Lines,
        };
        Reporter {
            mode,
            read: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            total: AtomicU64::new(0),
            phase: Mutex::new(String::new()),
            last_line: Mutex::new(Instant::now()),
        }
    }
}

fn bar() -> ProgressBar {
    let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    b.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    b
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

impl Progress for Reporter {
    fn phase(&self, name: &str, total: Option<u64>) {
        crate::fault::pause_point(&format!("phase:{name}"));
        *self.phase.lock().expect("lock") = name.to_string();
        self.total.store(total.unwrap_or(0), Ordering::Relaxed);
        match &self.mode {
            Mode::Bar(b) => {
                b.set_prefix(name.to_string());
                b.set_length(total.unwrap_or(0));
            }
            Mode::Lines => tracing::info!(
                "{name}{}",
                total
                    .map(|t| format!(": {:.0} MiB", mib(t)))
                    .unwrap_or_default()
            ),
            Mode::Quiet => {}
        }
    }

    fn advance(&self, read: u64, stored: u64) {
        let r = self.read.fetch_add(read, Ordering::Relaxed) + read;
        let s = self.stored.fetch_add(stored, Ordering::Relaxed) + stored;
        match &self.mode {
            Mode::Bar(b) => {
                b.set_position(r);
                let dedup = if s > 0 { r as f64 / s as f64 } else { 0.0 };
                b.set_message(format!("new {:.0} MiB (read/new {dedup:.1}x)", mib(s)));
            }
            Mode::Lines => {
                let mut last = self.last_line.lock().expect("lock");
                if last.elapsed() >= Duration::from_secs(10) {
                    *last = Instant::now();
                    let total = self.total.load(Ordering::Relaxed);
                    eprintln!(
                        "pgcairn: {}: {:.0}/{:.0} MiB read, {:.0} MiB new",
                        self.phase.lock().expect("lock"),
                        mib(r),
                        mib(total),
                        mib(s)
                    );
                }
            }
            Mode::Quiet => {}
        }
    }

    fn finish(&self) {
        if let Mode::Bar(b) = &self.mode {
            b.finish_and_clear();
        }
    }
}
