//! Fault injection for tests of the binary as a whole, and the panic policy it tests.
//!
//! A panic is a bug, never an answer. For `archive-get` the Rust default (exit 101) would
//! tell PostgreSQL "file not found", and recovery would end early at the wrong point, so
//! [`install_panic_policy`] makes any panic, on any thread (tokio would otherwise turn a
//! task's panic into an ordinary error), end `archive-get` with exit 200: PostgreSQL aborts
//! recovery instead.
//!
//! `PGCAIRN_TEST_PANIC=<point>` makes the named point panic (on a thread of its own, as a
//! worker would): the end-to-end tests use it to prove the policy.
//!
//! `PGCAIRN_TEST_PAUSE=<point>@<dir>` makes the named point stop: it creates
//! `<dir>/<point>.paused` and waits (at most [`PAUSE_MAX`]) until `<dir>/<point>.go` exists, so
//! a test can change the repository at an exact moment of a running command (a key rotation
//! while a backup loads its block index). The points are progress phases, `phase:<name>`.
//! The wait blocks the thread that reaches the point (tests only).
//!
//! The settings resolver ignores `PGCAIRN_TEST_*`.

use crate::exit::ExitCode;

/// Installs the panic hook: the default report, then for `archive-get` exit 200.
pub fn install_panic_policy(is_archive_get: bool) {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        if is_archive_get {
            eprintln!(
                "pgcairn: internal error (a bug: please report it); exiting {} so PostgreSQL \
                 stops recovery instead of taking the file as absent",
                ExitCode::AbortRecovery as i32
            );
            std::process::exit(ExitCode::AbortRecovery as i32);
        }
    }));
}

/// Panics, on a thread of its own, when `PGCAIRN_TEST_PANIC` names `point`.
pub fn panic_point(point: &str) {
    if std::env::var("PGCAIRN_TEST_PANIC").ok().as_deref() == Some(point) {
        let point = point.to_string();
        let _ = std::thread::spawn(move || panic!("injected panic at {point}")).join();
    }
}

/// The longest a paused point waits for its go-ahead.
pub const PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(600);

/// Waits for the go-ahead when `PGCAIRN_TEST_PAUSE` names `point` (see the module docs).
pub fn pause_point(point: &str) {
    let Ok(spec) = std::env::var("PGCAIRN_TEST_PAUSE") else {
        return;
    };
    let Some((name, dir)) = spec.split_once('@') else {
        return;
    };
    if name != point {
        return;
    }
    let dir = std::path::Path::new(dir);
    let slug: String = point
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let go = dir.join(format!("{slug}.go"));
    if let Err(e) = std::fs::write(dir.join(format!("{slug}.paused")), b"") {
        eprintln!(
            "pgcairn: PGCAIRN_TEST_PAUSE: cannot mark {point} paused in {}: {e}",
            dir.display()
        );
        return;
    }
    let started = std::time::Instant::now();
    while !go.exists() && started.elapsed() < PAUSE_MAX {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
