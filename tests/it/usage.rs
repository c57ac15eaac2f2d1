//! Command-line usage as a cryptsetup user meets it: clap's whole message on a usage error
//! (what is missing, the suggestion, the accepted values) with cryptsetup's exit code 1,
//! help for `nbdcrypt` alone, `-q`/`--batch-mode` accepted by every command, keyslot numbers
//! checked against 0-31, and terminal prompts in cryptsetup's words.

use std::path::Path;

use crate::common::{format_cheap, key_file, nbdcrypt, on_terminal, run, tempdir};

/// cryptsetup's exit codes: wrong parameters, wrong device.
const EXIT_INVALID: i32 = 1;
const EXIT_WRONG_DEVICE: i32 = 4;

/// Runs `nbdcrypt ARGS`; returns (exit code, stderr).
fn usage(args: &[&str]) -> (i32, String) {
    let out = run(nbdcrypt().args(args));
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_keep_clap_whole_message() {
    // (arguments, what the message must still say)
    let cases: &[(&[&str], &[&str])] = &[
        (&["open"], &["<IMAGE>", "Usage: nbdcrypt open"]),
        (&["open", "x.img", "--keyfile", "k"], &["--key-file"]),
        (&["opne", "x.img"], &["similar subcommand", "'open'"]),
        (
            &["open", "x.img", "--log-format", "yaml"],
            &["possible values", "text", "json"],
        ),
    ];
    for (args, wants) in cases {
        let (code, err) = usage(args);
        assert_eq!(code, EXIT_INVALID, "nbdcrypt {args:?}: {err}");
        for w in *wants {
            assert!(err.contains(w), "nbdcrypt {args:?} lost {w:?}:\n{err}");
        }
    }
}

#[test]
fn nbdcrypt_alone_prints_help() {
    let (code, err) = usage(&[]);
    assert_eq!(code, EXIT_INVALID, "{err}");
    assert!(err.contains("Commands:") && err.contains("format"), "{err}");
    assert!(!err.contains("error:"), "help, not an error: {err}");
}

#[test]
fn batch_mode_is_accepted_by_every_command() {
    // A missing image: every command gets past argument parsing to the image (exit 4, wrong
    // device), none stops at "unexpected argument".
    let missing = "/nonexistent/nbdcrypt-usage.img";
    let commands: &[&[&str]] = &[
        &["add-key", missing],
        &["change-key", missing],
        &["remove-key", missing],
        &["kill-slot", missing, "1"],
        &["wipe", missing],
        &["repair", missing],
        &["dump", missing],
        &["test-passphrase", missing],
        &["recovery-key", "add", missing],
        &["erase", missing],
        &["open", missing],
        &[
            "header-backup",
            missing,
            "--header-backup-file",
            "/nonexistent/b",
        ],
    ];
    for cmd in commands {
        for q in ["-q", "--batch-mode"] {
            let mut args = cmd.to_vec();
            args.push(q);
            let (code, err) = usage(&args);
            assert_eq!(
                code, EXIT_WRONG_DEVICE,
                "nbdcrypt {args:?} did not take {q}: {err}"
            );
        }
    }
}

#[test]
fn keyslot_numbers_beyond_31_are_out_of_range() {
    for args in [
        &["kill-slot", "x.img", "40"][..],
        &["open", "x.img", "--key-slot", "32"],
        &["add-key", "x.img", "-S", "99"],
    ] {
        let (code, err) = usage(args);
        assert_eq!(code, EXIT_INVALID, "{args:?}: {err}");
        assert!(err.contains("out of range 0-31"), "{args:?}: {err}");
    }
}

/// Runs `nbdcrypt ARGS` on a pseudo-terminal typing `input`; returns (exit code, everything
/// the terminal showed).
fn terminal(args: &[&str], input: &str) -> (i32, String) {
    let out = on_terminal(&args.join(" "), input);
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The prompt lines a terminal showed, in order.
fn prompts(screen: &str) -> Vec<&str> {
    screen
        .lines()
        .filter_map(|l| {
            l.find("Enter ")
                .or(l.find("Verify "))
                .map(|i| l[i..].trim_end())
        })
        .collect()
}

#[test]
fn prompts_say_which_passphrase_is_wanted() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("p.img");
    format_cheap(&img, &key, "17M", 512, "pbkdf2");
    let pass = String::from_utf8(std::fs::read(&key).unwrap()).unwrap();
    let img_s = img.to_str().unwrap();
    let cheap = |cmd: &'static str| {
        [
            cmd,
            img_s,
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ]
    };

    let (code, screen) = terminal(&cheap("add-key"), &format!("{pass}\nsecond\nsecond\n"));
    assert_eq!(code, 0, "{screen}");
    assert_eq!(
        prompts(&screen),
        [
            "Enter any existing passphrase:",
            "Enter new passphrase for key slot:",
            "Verify passphrase:"
        ],
        "{screen}"
    );

    let (code, screen) = terminal(&cheap("change-key"), "second\nthird\nthird\n");
    assert_eq!(code, 0, "{screen}");
    assert_eq!(
        prompts(&screen),
        [
            "Enter passphrase to be changed:",
            "Enter new passphrase:",
            "Verify passphrase:"
        ],
        "{screen}"
    );

    // kill-slot 1 with slot 1's own passphrase, three times: refused, and the hint is about
    // keyslots, not about key files (nothing was read from a file).
    let (code, screen) = terminal(&["kill-slot", img_s, "1"], "third\nthird\nthird\n");
    assert_eq!(code, 2, "{screen}");
    assert_eq!(
        prompts(&screen),
        ["Enter any remaining passphrase:"; 3],
        "{screen}"
    );
    assert!(!screen.contains("key-file"), "{screen}");
    assert!(screen.contains("lists the keyslots"), "{screen}");

    let (code, screen) = terminal(&["remove-key", img_s], "third\n");
    assert_eq!(code, 0, "{screen}");
    assert_eq!(
        prompts(&screen),
        ["Enter passphrase to be deleted:"],
        "{screen}"
    );

    let (code, screen) = terminal(&["test-passphrase", img_s], &format!("{pass}\n"));
    assert_eq!(code, 0, "{screen}");
    let want = format!("Enter passphrase for {}:", Path::new(img_s).display());
    assert_eq!(prompts(&screen), [want.as_str()], "{screen}");
}
