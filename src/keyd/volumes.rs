//! `nbdcrypt-keyd volume` (`docs/keyservice-api.md` "Volume ownership"): the administrator
//! assigns a volume to its owner host and lists registered volumes.

use clap::Subcommand;

use super::error::KeydError;
use crate::keyservice::store::Store;

/// `volume` subcommands.
#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Make HOST the owner of volume UUID (registering it if needed): for a host refused
    /// with 409 not-owner because another host registered its volume first.
    Assign {
        /// The volume's LUKS2 UUID (`nbdcrypt dump IMAGE` or `cryptsetup luksUUID IMAGE`).
        uuid: String,
        /// The host that owns the volume from now on.
        #[arg(long)]
        host: String,
    },
    /// Every registered volume as JSON lines: uuid, owner, created_ms, escrow_stored_by.
    List,
}

/// Runs a `volume` subcommand.
///
/// Errors: the store's ([`KeydError::Store`]: not a UUID, unknown host, database).
pub fn run(cmd: &VolumeCmd, store: &mut Store) -> Result<(), KeydError> {
    match cmd {
        VolumeCmd::Assign { uuid, host } => {
            let previous = store.volume_assign(uuid, host)?;
            let uuid = uuid.to_ascii_lowercase();
            match previous {
                Some(p) => println!("volume {uuid}: owner {host} (was {p})"),
                None => println!("volume {uuid}: owner {host} (newly registered)"),
            }
            // An escrow package another host stored stays (it may be the previous, rightful
            // owner's); say so, since a squatter's would be worthless.
            let stored_by = store
                .volume_list()?
                .into_iter()
                .find(|v| v.uuid == uuid)
                .and_then(|v| v.escrow_stored_by);
            if let Some(by) = stored_by.filter(|by| by != host) {
                eprintln!(
                    "warning: volume {uuid}'s escrow package was stored by host {by}; recovery \
                     checks a package against the volume's header, but store a fresh one from \
                     {host} with `nbdcrypt escrow IMAGE --key-service URL`"
                );
            }
        }
        VolumeCmd::List => {
            for v in store.volume_list()? {
                println!("{}", serde_json::to_string(&v).unwrap_or_default());
            }
        }
    }
    Ok(())
}
