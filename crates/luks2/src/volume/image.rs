//! An image as the commands see it: the file holding the LUKS2 header, and the file holding
//! the data segment — the same file, or a detached header (cryptsetup `--header`,
//! `format-spec.md` §1.1) and a data file holding only ciphertext.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{load_detached_header, load_header, open_image, Access, LoadedHeader, VolumeError};

/// The open files of one volume. For an image holding its own header, `data` is a second handle
/// of the same open file (it shares the locks).
#[derive(Debug)]
pub struct OpenedImage {
    /// The file holding the header: the image, or the detached header file.
    pub header: File,
    /// Its path.
    pub header_path: PathBuf,
    /// The file holding the data segment.
    pub data: File,
    /// Its path (the `IMAGE` argument).
    pub data_path: PathBuf,
    /// Whether the header is detached.
    pub detached: bool,
}

impl OpenedImage {
    /// Open `image` (and the detached `header` file, if given) with the locks of `access`
    /// (see [`Access`]). With a detached header, the header file gets `access` and the data
    /// file the same, except that header updates ([`Access::HeaderWrite`]) only lock the
    /// data file as [`Access::Inspect`] (they never write it).
    ///
    /// Errors: as [`open_image`], naming the file that failed.
    pub fn open(
        image: &Path,
        header: Option<&Path>,
        access: Access,
    ) -> Result<OpenedImage, VolumeError> {
        match header {
            None => {
                let file = open_image(image, access)?;
                let data = file.try_clone().map_err(|e| VolumeError::Device {
                    path: image.to_owned(),
                    source: e,
                })?;
                Ok(OpenedImage {
                    header: file,
                    header_path: image.to_owned(),
                    data,
                    data_path: image.to_owned(),
                    detached: false,
                })
            }
            Some(h) => {
                let header = open_image(h, access)?;
                let data_access = match access {
                    Access::HeaderWrite => Access::Inspect,
                    a => a,
                };
                let data = open_image(image, data_access)?;
                Ok(OpenedImage {
                    header,
                    header_path: h.to_owned(),
                    data,
                    data_path: image.to_owned(),
                    detached: true,
                })
            }
        }
    }

    /// Read the header ([`load_header`], or [`load_detached_header`] against the data file's
    /// length). Errors: as those.
    pub fn load(&self) -> Result<LoadedHeader, VolumeError> {
        if self.detached {
            let len = super::image_len(&self.data, &self.data_path)?;
            load_detached_header(&self.header, &self.header_path, len)
        } else {
            load_header(&self.header, &self.header_path)
        }
    }
}
