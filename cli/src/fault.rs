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
//! `PGCAIRN_TEST_PAUSE=<point>@<dir>` makes the named point stop until a file says go
//! ([`pgcairn_engine::pause_point`]), so a test can change the repository at an exact moment of
//! a running command (a key rotation while a backup loads its block index). The CLI's points
//! are progress phases, `phase:<name>`.
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

/// Waits for the go-ahead when `PGCAIRN_TEST_PAUSE` names `point`
/// ([`pgcairn_engine::pause_point`]).
pub fn pause_point(point: &str) {
    pgcairn_engine::pause_point::pause(point);
}
