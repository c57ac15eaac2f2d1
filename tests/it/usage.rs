//! Command-line usage as a cryptsetup user meets it: clap's whole message on a usage error
//! (what is missing, the suggestion, the accepted values) with cryptsetup's exit code 1,
//! help for `nbdcrypt` alone, and `-q`/`--batch-mode` accepted by every command.

use crate::common::{nbdcrypt, run};

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
