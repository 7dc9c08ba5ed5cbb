//! Shell completions and man pages, generated from the clap definitions at run time so they
//! can never drift from `--help`. The Debian package (`scripts/package.sh`) calls
//! `pgcairn completions SHELL` and the hidden `pgcairn manpages DIR` on the binary it ships.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::args::{Cli, Command, CompletionShell};
use crate::exit::{ExitCode, Failure};

/// Answers the commands that need no configuration; `None` for every other command.
pub fn answer(command: &Command) -> Option<Result<(), Failure>> {
    match command {
        Command::Completions { shell } => Some(completions(*shell)),
        Command::Manpages { dir } => Some(manpages(dir)),
        _ => None,
    }
}

fn completions(shell: CompletionShell) -> Result<(), Failure> {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pgcairn", &mut out);
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        // `pgcairn completions bash | head` is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::new(
            ExitCode::Failed,
            format!("cannot write to standard output: {e}"),
        )),
    }
}

/// Writes `pgcairn.1` and `pgcairn-<subcommand>.1` for every visible subcommand, nested ones
/// included (`pgcairn-key-add.1`: the `pgcairn key` page refers to them).
fn manpages(dir: &Path) -> Result<(), Failure> {
    let fail = |what: &str, path: &Path, e: std::io::Error| {
        Failure::new(
            ExitCode::Failed,
            format!("cannot {what} {}: {e}", path.display()),
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("create directory", dir, e))?;
    let mut root = Cli::command();
    root.build();
    let mut pages = vec![("pgcairn".to_string(), root.clone())];
    add_subcommand_pages("pgcairn", &root, &mut pages);
    for (name, cmd) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .map_err(|e| fail("render the man page for", Path::new(&name), e))?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, out).map_err(|e| fail("write", &path, e))?;
    }
    Ok(())
}

/// Adds a page `<prefix>-<name>` for each visible subcommand of `cmd`, and of theirs.
fn add_subcommand_pages(
    prefix: &str,
    cmd: &clap::Command,
    pages: &mut Vec<(String, clap::Command)>,
) {
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("{prefix}-{}", sub.get_name());
        // The page's title and synopsis carry the full command name ("pgcairn-backup").
        pages.push((name.clone(), sub.clone().name(name.clone())));
        add_subcommand_pages(&name, sub, pages);
    }
}
