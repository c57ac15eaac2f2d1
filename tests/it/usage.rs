//! Command-line usage as a cryptsetup user meets it: clap's whole message on a usage error
//! (what is missing, the suggestion, the accepted values) with cryptsetup's exit code 1,
//! help for `nbdcrypt` alone, `-q`/`--batch-mode` accepted by every command, keyslot numbers
//! checked against 0-31, and terminal prompts in cryptsetup's words.

use std::path::Path;

use crate::common::{format_cheap, key_file, nbdcrypt, on_terminal, run, stderr, tempdir};

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
    assert!(
        !screen.contains("deriving key"),
        "a cheap KDF is not announced: {screen}"
    );
}

/// After a terminal prompt, a KDF of a second or more is announced with this machine's
/// estimate, so the pause is not taken for a hang.
#[test]
fn a_long_kdf_after_a_prompt_says_so() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("slow.img");
    // Argon2id, 4 passes over 512 MiB on one lane: seconds on any machine, however loaded
    // (the estimate comes from this machine's speed measured at the time of the unlock).
    let out = run(nbdcrypt()
        .arg("format")
        .arg(&img)
        .args(["--size", "17M", "--pbkdf", "argon2id"])
        .args(["--pbkdf-force-iterations", "4", "--pbkdf-memory", "524288"])
        .args(["--pbkdf-parallel", "1"])
        .arg("--key-file")
        .arg(&key));
    assert!(out.status.success(), "{}", stderr(&out));
    let pass = String::from_utf8(std::fs::read(&key).unwrap()).unwrap();
    let (code, screen) = terminal(
        &["test-passphrase", img.to_str().unwrap()],
        &format!("{pass}\n"),
    );
    assert_eq!(code, 0, "{screen}");
    let said = screen
        .lines()
        .find_map(|l| l.trim().strip_prefix("deriving key, about "))
        .unwrap_or_else(|| panic!("no announcement: {screen}"));
    let secs: u64 = said.trim_end_matches(" s").parse().expect(said);
    assert!((1..=60).contains(&secs), "{said}");
    // A key file is no prompt: nothing is announced.
    let out = run(nbdcrypt()
        .arg("test-passphrase")
        .arg(&img)
        .arg("--key-file")
        .arg(&key));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("deriving key"), "{}", stderr(&out));
}

#[test]
fn format_says_the_volume_size_and_takes_volume_size() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let cheap = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
    let format = |img: &Path, size: &[&str]| {
        let out = run(nbdcrypt()
            .arg("format")
            .arg(img)
            .args(size)
            .args(cheap)
            .arg("--key-file")
            .arg(&key));
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    // --volume-size: the volume is exactly that, the file that plus the 16 MiB header.
    let img = dir.path().join("v.img");
    let said = format(&img, &["--volume-size", "64M"]);
    assert!(said.contains("volume 64.00 MiB (67108864 bytes)"), "{said}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), (64 + 16) << 20);
    // --size: the file is that, the volume 16 MiB less (as cryptsetup), and it says so.
    let img = dir.path().join("s.img");
    let said = format(&img, &["--size", "64M"]);
    assert!(said.contains("volume 48.00 MiB (50331648 bytes)"), "{said}");
    // With a detached header the data file is the volume.
    let (data, hdr) = (dir.path().join("d.img"), dir.path().join("h.img"));
    let out = run(nbdcrypt()
        .arg("format")
        .arg(&data)
        .arg("--header")
        .arg(&hdr)
        .args(["--volume-size", "8M"])
        .args(cheap)
        .arg("--key-file")
        .arg(&key));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&data).unwrap().len(), 8 << 20);
    // No file and no size: refused before any passphrase is read, with the way out.
    let img = dir.path().join("new.img");
    let out = run(nbdcrypt().arg("format").arg(&img));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_INVALID), "{err}");
    assert!(
        err.contains("does not exist") && err.contains("--volume-size"),
        "{err}"
    );
    assert!(!img.exists());
}

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("p.img");
    format_cheap(&img, &key, "17M", 512, "pbkdf2");
    // stdout is a pipe whose reading end is already closed (`nbdcrypt dump | true`): the
    // first write ends the process by SIGPIPE, as `cat`'s, not a "Broken pipe" panic.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = nbdcrypt()
        .arg("dump")
        .arg(&img)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

/// A wrong passphrase piped on stdin (no --key-file) gets a hint about stdin's one line, not
/// the key-file hint.
#[test]
fn a_wrong_piped_passphrase_gets_the_stdin_hint() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("p.img");
    format_cheap(&img, &key, "17M", 512, "pbkdf2");
    let mut child = nbdcrypt()
        .arg("test-passphrase")
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"nope\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("one line of stdin"), "{err}");
    assert!(!err.contains("--key-file is used byte for byte"), "{err}");
}
