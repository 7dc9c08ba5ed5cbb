//! Named points where a test of the binary as a whole can hold a running command still
//! (`PGCAIRN_TEST_PAUSE=<point>@<dir>`), to change the repository or start another command at
//! an exact moment: the point creates `<dir>/<point>.paused` and waits (at most [`PAUSE_MAX`])
//! until `<dir>/<point>.go` exists (`<point>` with every character but letters and digits
//! turned into `-`). The CLI's progress phases are points (`phase:<name>`); so are moments
//! inside engine commands that report no phases (`expire:removing`, after an expire has
//! decided everything and before it deletes anything). Unset, a point costs one lookup of the
//! variable. The wait blocks the thread that reaches the point (tests only).

/// The longest a paused point waits for its go-ahead.
pub const PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(600);

/// Waits for the go-ahead when `PGCAIRN_TEST_PAUSE` names `point` (see the module docs).
pub fn pause(point: &str) {
    let Ok(spec) = std::env::var("PGCAIRN_TEST_PAUSE") else {
        return;
    };
    let Some((name, dir)) = spec.split_once('@') else {
        return;
    };
    if name != point {
        return;
    }
    let (paused, go) = files(std::path::Path::new(dir), point);
    if let Err(e) = std::fs::write(&paused, b"") {
        eprintln!(
            "pgcairn: PGCAIRN_TEST_PAUSE: cannot mark {point} paused ({}): {e}",
            paused.display()
        );
        return;
    }
    let started = std::time::Instant::now();
    while !go.exists() && started.elapsed() < PAUSE_MAX {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The files of `point` in `dir`: the one the point creates when it is reached
/// (`<slug>.paused`) and the one it waits for (`<slug>.go`).
pub fn files(dir: &std::path::Path, point: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let slug: String = point
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    (
        dir.join(format!("{slug}.paused")),
        dir.join(format!("{slug}.go")),
    )
}
