//! Documentation generated from the clap definitions: every subcommand's `--help` ends with
//! examples, `nbdcrypt man DIR` writes a page per subcommand that `nroff -man` renders without
//! warnings, and `nbdcrypt completions SHELL` prints scripts naming every subcommand (bash's
//! passes `bash -n`).

use crate::common;

use common::*;

/// The visible subcommands, from `nbdcrypt --help`'s "Commands:" list (without `help`).
fn subcommands() -> Vec<String> {
    let help = ok(nbdcrypt().arg("--help"));
    let list = help.split("Commands:").nth(1).unwrap();
    let list = list.split("\n\n").next().unwrap();
    let names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(String::from)
        .collect();
    assert!(names.len() >= 15, "{names:?}");
    names
}

#[test]
fn every_subcommand_help_has_examples() {
    let mut cmds: Vec<Vec<String>> = subcommands().into_iter().map(|c| vec![c]).collect();
    cmds.push(vec!["recovery-key".into(), "add".into()]);
    cmds.push(vec!["man".into()]);
    cmds.push(vec!["completions".into()]);
    for c in cmds {
        let out = ok(nbdcrypt().args(&c).arg("--help"));
        let ex = out
            .split("Examples:\n")
            .nth(1)
            .unwrap_or_else(|| panic!("`nbdcrypt {} --help` has no examples:\n{out}", c.join(" ")));
        // Each example line runs the subcommand it documents (or a peer tool).
        assert!(
            ex.lines().any(|l| l
                .trim_start()
                .starts_with(&format!("nbdcrypt {}", c.join(" ")))),
            "examples of {c:?} never run it:\n{ex}"
        );
    }
}

#[test]
fn man_pages_for_every_subcommand_render() {
    let nroff = require("nroff", "groff-base");
    let dir = tempdir();
    let out = dir.path().join("man1");
    ok(nbdcrypt().arg("man").arg(&out));
    let mut pages: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let mut want: Vec<String> = subcommands()
        .iter()
        .map(|c| format!("nbdcrypt-{c}.1"))
        .chain(["nbdcrypt.1".into(), "nbdcrypt-recovery-key-add.1".into()])
        .collect();
    want.sort();
    assert_eq!(
        pages, want,
        "hidden commands (man, completions) get no page"
    );
    for p in &pages {
        let r = run(std::process::Command::new(&nroff)
            .args(["-man", "-ww"])
            .arg(out.join(p)));
        assert!(
            r.status.success() && r.stderr.is_empty(),
            "{p}: {}",
            stderr(&r)
        );
    }
    let format = std::fs::read_to_string(out.join("nbdcrypt-format.1")).unwrap();
    for flag in ["header", "wipe", "sector\\-size", "Examples:"] {
        assert!(format.contains(flag), "nbdcrypt-format.1 lacks {flag}");
    }
}

#[test]
fn completions_name_every_subcommand() {
    let subs = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(nbdcrypt().args(["completions", shell]));
        for s in &subs {
            assert!(script.contains(s.as_str()), "{shell} completion lacks {s}");
        }
        assert!(
            script.contains("--header"),
            "{shell} completion lacks --header"
        );
    }
    let dir = tempdir();
    let f = dir.path().join("nbdcrypt.bash");
    std::fs::write(&f, ok(nbdcrypt().args(["completions", "bash"]))).unwrap();
    ok(std::process::Command::new("bash").arg("-n").arg(&f));
    let out = run(nbdcrypt().args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(1));
}

/// A symlink planted at a page's name in DIR is replaced by the page, never written through:
/// the file it points to is unchanged.
#[test]
fn man_does_not_write_through_a_planted_symlink() {
    let dir = tempdir();
    let out = dir.path().join("man1");
    std::fs::create_dir(&out).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious\n").unwrap();
    let page = out.join("nbdcrypt-open.1");
    std::os::unix::fs::symlink(&victim, &page).unwrap();
    ok(nbdcrypt().arg("man").arg(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
    assert!(std::fs::symlink_metadata(&page).unwrap().is_file());
    assert!(std::fs::read_to_string(&page).unwrap().contains(".TH"));
}
