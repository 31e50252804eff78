//! `--help` of `powerapi` and of every subcommand it lists, compared with checked-in copies in
//! `powerapi-user/tests/snapshots/help/`, so that moving the CLI code around provably changes no
//! flag, default or description. A deliberate change refreshes them:
//!
//! ```text
//! UPDATE_SNAPSHOTS=1 AYA_BUILD_SKIP=1 cargo test -p powerapi-user --lib help_snapshot
//! ```
//!
//! then `git diff powerapi-user/tests/snapshots` shows what users will see change. `flags.txt`
//! beside the folder lists every flag, hidden ones and hidden commands included, which `--help`
//! does not show.

use std::{
    fs,
    path::{Path, PathBuf},
};

use clap::CommandFactory;

use super::Cli;

/// The width clap lays help out for when it cannot ask the terminal (built without `wrap_help`,
/// as now, it always uses this); fixed here so that enabling `wrap_help` later keeps the
/// snapshots independent of the terminal the tests run in.
const HELP_WIDTH: usize = 100;

fn snapshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots")
}

/// What `powerapi <path…> --help` prints, through clap's own parsing: it chooses between the
/// one-line and the paragraph layout by whether any flag has a long description, which
/// `render_long_help` would not.
fn render_help(path: &[String]) -> String {
    let argv = std::iter::once("powerapi".to_string())
        .chain(path.iter().cloned())
        .chain(std::iter::once("--help".to_string()));
    let cmd = Cli::command().term_width(HELP_WIDTH);
    match cmd.try_get_matches_from(argv) {
        Err(err) if err.kind() == clap::error::ErrorKind::DisplayHelp => err.render().to_string(),
        Err(err) => panic!("`powerapi {} --help` failed: {err}", path.join(" ")),
        Ok(_) => panic!("`powerapi {} --help` printed no help", path.join(" ")),
    }
}

/// The path of `cmd` and of each subcommand that its help lists, depth first. Hidden commands
/// are left out (users never see them; the overhead benchmarks own their flags), and so is
/// clap's `help`: `powerapi help --help` is an error, and `powerapi help record` prints what
/// `powerapi record --help` does.
fn command_paths(cmd: &clap::Command, path: &[String], out: &mut Vec<Vec<String>>) {
    out.push(path.to_vec());
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let mut sub_path = path.to_vec();
        sub_path.push(sub.get_name().to_string());
        command_paths(sub, &sub_path, out);
    }
}

/// Clap prints an environment variable's current value beside its name (`[env:
/// POWERAPI_INTERVAL=5s]`), read when the command is built; the snapshots hold what a user with
/// none set sees, whatever the environment `cargo test` runs in. Help is not wrapped, so taking
/// the value out leaves the rest of the layout as it would have been.
fn without_env_values(cmd: &clap::Command, mut rendered: String) -> String {
    for arg in cmd.get_arguments() {
        let Some(name) = arg.get_env() else { continue };
        if let Some(value) = std::env::var_os(name) {
            let name = name.to_string_lossy();
            rendered = rendered.replace(
                &format!("[env: {name}={}]", value.to_string_lossy()),
                &format!("[env: {name}=]"),
            );
        }
    }
    for sub in cmd.get_subcommands() {
        rendered = without_env_values(sub, rendered);
    }
    rendered
}

/// The first line where `expected` and `actual` differ, as a short diff.
fn first_difference(expected: &str, actual: &str) -> String {
    let (mut old, mut new) = (expected.lines(), actual.lines());
    for number in 1.. {
        match (old.next(), new.next()) {
            (Some(a), Some(b)) if a == b => continue,
            (None, None) => break,
            (a, b) => {
                return format!(
                    "line {number}:\n    - {}\n    + {}",
                    a.unwrap_or("<end of snapshot>"),
                    b.unwrap_or("<end of help>")
                );
            }
        }
    }
    "only in line endings or a trailing newline".to_string()
}

#[test]
fn help_matches_snapshots() {
    let cmd = Cli::command();
    let mut paths = Vec::new();
    command_paths(&cmd, &[], &mut paths);
    let dir = snapshots().join("help");
    // (the command as typed, its snapshot file, what its --help prints)
    let rendered: Vec<(String, PathBuf, String)> = paths
        .iter()
        .map(|path| {
            let stem = if path.is_empty() {
                "powerapi".to_string()
            } else {
                path.join("-")
            };
            (
                ["powerapi"]
                    .into_iter()
                    .chain(path.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
                dir.join(format!("{stem}.txt")),
                without_env_values(&cmd, render_help(path)),
            )
        })
        .collect();

    let update = updating();
    let mut failures = Vec::new();
    for (command, path, help) in &rendered {
        failures.extend(compare(path, help, &format!("`{command} --help`"), update));
    }
    // A snapshot whose command is gone is a removed command: stale copies would hide that.
    let wanted: Vec<&PathBuf> = rendered.iter().map(|(_, path, _)| path).collect();
    // (a missing folder already failed above, once per command)
    let listed = fs::read_dir(&dir).into_iter().flatten();
    for path in listed.filter_map(|entry| entry.ok().map(|entry| entry.path())) {
        if path.extension().is_none_or(|ext| ext != "txt") || wanted.contains(&&path) {
            continue;
        }
        if update {
            fs::remove_file(&path).expect("remove a stale snapshot");
        } else {
            failures.push(format!(
                "{} matches no command any more (removed or renamed?)",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", explain(&failures));
}

/// Every flag of every command, hidden ones included, one line each: what `--help` leaves out
/// (hidden flags and commands, aliases, the action) changes no more silently than what it shows.
#[test]
fn flags_match_snapshot() {
    let mut lines = Vec::new();
    list_flags(&Cli::command(), "powerapi", &mut lines);
    let path = snapshots().join("flags.txt");
    let failures: Vec<String> = compare(
        &path,
        &(lines.join("\n") + "\n"),
        "the flag list",
        updating(),
    )
    .into_iter()
    .collect();
    assert!(failures.is_empty(), "{}", explain(&failures));
}

fn list_flags(cmd: &clap::Command, command: &str, lines: &mut Vec<String>) {
    let hidden = |yes: bool| if yes { " hidden" } else { "" };
    lines.push(format!("{command}{}", hidden(cmd.is_hide_set())));
    for alias in cmd.get_all_aliases() {
        lines.push(format!("{command} alias {alias}"));
    }
    for arg in cmd.get_arguments() {
        let mut line = format!("{command} ");
        match (arg.get_long(), arg.get_short()) {
            (Some(long), Some(short)) => line += &format!("-{short}/--{long}"),
            (Some(long), None) => line += &format!("--{long}"),
            (None, Some(short)) => line += &format!("-{short}"),
            (None, None) => line += &format!("<{}>", arg.get_id()),
        }
        line += &format!(" {:?}", arg.get_action());
        // A switch's value parser (true|false) is clap's, not a flag's interface.
        let takes_values = arg.get_action().takes_values();
        if let Some(names) = arg.get_value_names().filter(|_| takes_values) {
            let names: Vec<&str> = names.iter().map(|name| name.as_str()).collect();
            line += &format!(" value={}", names.join(","));
        }
        let aliases: Vec<String> = arg
            .get_all_aliases()
            .unwrap_or_default()
            .iter()
            .map(|alias| format!("--{alias}"))
            .chain(
                arg.get_all_short_aliases()
                    .unwrap_or_default()
                    .iter()
                    .map(|alias| format!("-{alias}")),
            )
            .collect();
        if !aliases.is_empty() {
            line += &format!(" aliases={}", aliases.join(","));
        }
        if let Some(env) = arg.get_env() {
            line += &format!(" env={}", env.to_string_lossy());
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() {
            line += &format!(" default={}", defaults.join(","));
        }
        let possible: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|value| value.get_name().to_string())
            .collect();
        if takes_values && !possible.is_empty() {
            line += &format!(" one-of={}", possible.join("|"));
        }
        if arg.is_required_set() {
            line += " required";
        }
        if arg.is_global_set() {
            line += " global";
        }
        line += hidden(arg.is_hide_set());
        lines.push(line);
    }
    for sub in cmd.get_subcommands() {
        list_flags(sub, &format!("{command} {}", sub.get_name()), lines);
    }
}

/// `UPDATE_SNAPSHOTS=1` (any value but `0`): write what the code prints instead of comparing.
fn updating() -> bool {
    std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v != "0" && !v.is_empty())
}

/// Compares `actual` with the snapshot at `path`, or writes it there when updating; the failure,
/// if any, names `what` and the first line that differs.
fn compare(path: &Path, actual: &str, what: &str, update: bool) -> Option<String> {
    if update {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).expect("create the snapshot folder");
        }
        fs::write(path, actual).expect("write a snapshot");
        return None;
    }
    match fs::read_to_string(path) {
        Ok(expected) if expected == actual => None,
        Ok(expected) => Some(format!(
            "{what} differs from {}: {}",
            path.display(),
            first_difference(&expected, actual)
        )),
        Err(err) => Some(format!(
            "{what} has no snapshot ({}: {err})",
            path.display()
        )),
    }
}

fn explain(failures: &[String]) -> String {
    format!(
        "the command line changed:\n{}\n\nIf the change is meant, refresh the snapshots and review \
         the diff:\n  UPDATE_SNAPSHOTS=1 AYA_BUILD_SKIP=1 cargo test -p powerapi-user --lib \
         help_snapshot\n  git diff powerapi-user/tests/snapshots",
        failures.join("\n")
    )
}
