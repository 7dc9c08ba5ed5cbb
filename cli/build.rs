//! Records the git commit the binary is built from, for `pgcairn --version`.
//!
//! `PGCAIRN_BUILD_COMMIT` in the build environment wins (packagers building from a tarball set
//! it); otherwise `git rev-parse` on the checkout, with "-dirty" when tracked files differ;
//! otherwise "unknown commit". (`PGCAIRN_BUILD_*` is a build-time namespace: the settings
//! resolver ignores it at run time.)

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=PGCAIRN_BUILD_COMMIT");
    let commit = std::env::var("PGCAIRN_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(from_git);
    let described = match commit {
        Some(c) => format!("commit {c}"),
        None => "unknown commit".to_string(),
    };
    println!("cargo:rustc-env=PGCAIRN_GIT_COMMIT={described}");
}

fn from_git() -> Option<String> {
    let head = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Rebuild when HEAD moves or the index changes (a commit, a checkout). `--git-path`
    // gives each file's real location, also in a worktree, whose refs live in the main
    // repository's git directory.
    let mut watch = vec!["HEAD".to_string(), "index".to_string()];
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(reference);
    }
    for name in watch {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &name]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}
