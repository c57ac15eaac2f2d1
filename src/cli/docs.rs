//! Documentation that ships with the binary, generated from the clap definitions so it never
//! drifts from `--help`: man pages (`clap_mangen`), shell completions (`clap_complete`), and
//! the examples shown after each subcommand's `--help`.

use std::path::PathBuf;

use super::error::CliError;

/// `nbdcrypt man`.
#[derive(clap::Args)]
pub struct ManArgs {
    /// Directory to write them to (created if missing).
    dir: PathBuf,
}

impl ManArgs {
    /// `nbdcrypt man DIR`: write `nbdcrypt.1` and one page per subcommand of `cli` (the whole
    /// command line: `nbdcrypt-format.1`, `nbdcrypt-recovery-key-add.1`, ...) into DIR,
    /// created if missing. Hidden subcommands get no page. Each page replaces its file without
    /// following a symlink there ([`nbdcrypt_luks2::fsutil::replace`], mode 0644). Errors:
    /// [`CliError::Usage`] naming DIR when it cannot be written.
    pub fn run(self, cli: clap::Command) -> Result<(), CliError> {
        let dir = &self.dir;
        let fail =
            |e: std::io::Error| CliError::Usage(format!("cannot write to {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(fail)?;
        let mut cli = cli.disable_help_subcommand(true);
        cli.build();
        write_man_pages(cli, dir).map_err(fail)?;
        eprintln!("man pages written to {}", dir.display());
        Ok(())
    }
}

/// The page of `cmd` and of each of its visible subcommands, recursively, into `dir` (as
/// `clap_mangen::generate_to` names them, but never written through a symlink).
fn write_man_pages(cmd: clap::Command, dir: &std::path::Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        write_man_pages(sub, dir)?;
    }
    let man = clap_mangen::Man::new(cmd);
    let mut page = Vec::new();
    man.render(&mut page)?;
    nbdcrypt_luks2::fsutil::replace(&dir.join(man.get_filename()), &page, 0o644)
}

/// `nbdcrypt completions`.
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// bash, elvish, fish, powershell or zsh.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

impl CompletionsArgs {
    /// `nbdcrypt completions SHELL`: print the completion script of `cli` (the whole command
    /// line) for SHELL on stdout.
    pub fn run(self, mut cli: clap::Command) -> Result<(), CliError> {
        clap_complete::generate(self.shell, &mut cli, "nbdcrypt", &mut std::io::stdout());
        Ok(())
    }
}

pub(super) const EX_FORMAT: &str = "Examples:
  nbdcrypt format vol.img --size 10G --key-file pass.txt
  nbdcrypt format vol.img --size 10G --sector-size 4096 --label data --wipe
  nbdcrypt format data.img --header data.hdr --size 10G     # detached header (cryptsetup --header)
  nbdcrypt format vol.img --size 10G --escrow https://keyd:8443   # then escrow the volume key
  truncate -s 1G vol.img && nbdcrypt format vol.img --batch-mode --key-file -  < pass.txt";

pub(super) const EX_WIPE: &str = "Examples:
  nbdcrypt wipe vol.img --key-file pass.txt
  nbdcrypt wipe vol.img --key-file pass.txt --resume         # after Ctrl-C (exit 130)
  nbdcrypt wipe data.img --header data.hdr";

pub(super) const EX_DUMP: &str = "Examples:
  nbdcrypt dump vol.img
  nbdcrypt dump vol.img --json | jq '.keyslots[].id'        # stable fields: docs/json.md
  nbdcrypt dump data.img --header data.hdr --dump-json-metadata";

pub(super) const EX_TEST_PASSPHRASE: &str = "Examples:
  nbdcrypt test-passphrase vol.img --key-file pass.txt && echo ok
  nbdcrypt test-passphrase vol.img --key-slot 1              # prompts
  nbdcrypt test-passphrase vol.img --recovery-key";

pub(super) const EX_OPEN: &str = "Examples:
  nbdcrypt open vol.img --key-file pass.txt                  # nbd://127.0.0.1:10809/vol
  nbdcrypt open vol.img --socket /run/vol.sock --read-only
  nbdcrypt open data.img --header data.hdr --listen 0.0.0.0:10809 --tls-cert c.pem --tls-key k.pem
  nbdinfo nbd://127.0.0.1:10809/vol; sudo nbd-client 127.0.0.1 10809 /dev/nbd0 -N vol
  nbdcrypt open vol.img --key-file key --socket /run/vol.sock --fork --pid-file /run/vol.pid
  sudo modprobe nbd && sudo nbdcrypt open vol.img --connect /dev/nbd0   # then mkfs.ext4 /dev/nbd0
  sudo nbdcrypt close /dev/nbd0";

pub(super) const EX_CLOSE: &str = "Examples:
  nbdcrypt close /dev/nbd0                     # as root, after umount of its filesystem
  nbdcrypt open --disconnect /dev/nbd0         # the same, as qemu-nbd -d";

pub(super) const EX_SERVE: &str = "Examples:
  nbdcrypt serve --export home=home.img --export backup=backup.img --read-only=backup
  nbdcrypt serve --export a=a.img --key-file a=a.key --export b=b.img --key-file b=b.key
  nbdcrypt serve --export d=data.img --header d=data.hdr --discard d=passdown
  nbdinfo --list nbd://127.0.0.1:10809/";

pub(super) const EX_ADD_KEY: &str = "Examples:
  nbdcrypt add-key vol.img --key-file old.txt --new-keyfile new.txt
  nbdcrypt add-key vol.img --key-slot 5 --pbkdf pbkdf2 --iter-time 1000   # prompts for both
  nbdcrypt add-key vol.img --volume-key-file vk.bin --new-keyfile new.txt
  nbdcrypt add-key vol.img --key-file old.txt --key-service https://keyd1:8443 \\
      --key-service https://keyd2:8443 --kek volumes   # then `open` needs no passphrase";

pub(super) const EX_ESCROW: &str = "Examples:
  nbdcrypt escrow vol.img --key-file pass.txt --key-service https://keyd:8443
  nbdcrypt escrow vol.img --recovery-key rk.txt --key-service https://keyd:8443  # with the recovery key
  age -d -i officer.key package.age            # what a recovery officer does with the package";

pub(super) const EX_CHANGE_KEY: &str = "Examples:
  nbdcrypt change-key vol.img --key-file old.txt --new-keyfile new.txt
  nbdcrypt change-key vol.img --key-slot 1";

pub(super) const EX_REMOVE_KEY: &str = "Examples:
  nbdcrypt remove-key vol.img --key-file old.txt
  nbdcrypt remove-key data.img --header data.hdr";

pub(super) const EX_KILL_SLOT: &str = "Examples:
  nbdcrypt kill-slot vol.img 1 --key-file slot0-pass.txt
  nbdcrypt kill-slot vol.img 1 --batch-mode";

pub(super) const EX_RECOVERY_ADD: &str = "Examples:
  nbdcrypt recovery-key add vol.img --key-file pass.txt      # prints the key once
  nbdcrypt recovery-key add vol.img --key-file pass.txt --escrow https://keyd:8443
  nbdcrypt open vol.img --recovery-key                       # type it in later";

pub(super) const EX_ERASE: &str = "Examples:
  nbdcrypt header-backup vol.img --header-backup-file vol.hdr.bak   # first, if in doubt
  nbdcrypt erase vol.img --batch-mode";

pub(super) const EX_HEADER_BACKUP: &str = "Examples:
  nbdcrypt header-backup vol.img --header-backup-file vol.hdr.bak
  nbdcrypt header-backup data.img --header data.hdr --header-backup-file data.hdr.bak";

pub(super) const EX_HEADER_RESTORE: &str = "Examples:
  nbdcrypt header-restore vol.img --header-backup-file vol.hdr.bak
  cryptsetup luksHeaderBackup vol.img --header-backup-file cs.bak && \\
    nbdcrypt header-restore vol.img --header-backup-file cs.bak";

pub(super) const EX_REPAIR: &str = "Examples:
  nbdcrypt dump vol.img        # warns when a header copy is damaged
  nbdcrypt repair vol.img";

pub(super) const EX_BENCHMARK: &str = "Examples:
  nbdcrypt benchmark
  nbdcrypt benchmark --iter-time 1000 --pbkdf-memory 262144";

pub(super) const EX_DEMO: &str = "Examples:
  nbdcrypt demo
  nbdcrypt demo --dir /tmp/demo --listen 127.0.0.1:10810 --discard passdown";

pub(super) const EX_MAN: &str = "Examples:
  nbdcrypt man /usr/local/share/man/man1 && man nbdcrypt-open";

pub(super) const EX_COMPLETIONS: &str = "Examples:
  nbdcrypt completions bash > /etc/bash_completion.d/nbdcrypt
  nbdcrypt completions zsh > ~/.zfunc/_nbdcrypt
  nbdcrypt completions fish > ~/.config/fish/completions/nbdcrypt.fish";

pub(super) const EX_RECOVER: &str = "Examples:
  nbdcrypt recover vol.img --key-service https://keyd:8443 --token-file olga.token \\
      --identity officer.key --key-service-ca ca.pem   # prompts for the new passphrase
  nbdcrypt recover data.img --header data.hdr --key-service https://keyd:8443 \\
      --token-file - --identity officer.key --new-keyfile new.txt \\
      --key-service-ca ca.pem < olga.token   # the token on stdin";
