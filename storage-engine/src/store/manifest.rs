//! Reading and atomically replacing the `MANIFEST`: which base segments exist and where the
//! log starts.
//!
//! Replacement: write `MANIFEST.tmp`, fdatasync it, rename it over `MANIFEST`, sync the
//! directory. A crash leaves either the old or the new manifest, never a mix.

use super::io_error;
use super::segments::{MANIFEST_NAME, MANIFEST_TMP_NAME};
use crate::codec::{self, ManifestData, ManifestError};
use crate::{Disk, StoreError};

/// Reads and verifies the manifest; returns its format version and contents.
pub async fn read(disk: &dyn Disk) -> Result<(u32, ManifestData), StoreError> {
    let file = disk
        .open_file(MANIFEST_NAME, false)
        .await
        .map_err(|source| io_error("open", MANIFEST_NAME, source))?;
    let length = file
        .len()
        .await
        .map_err(|source| io_error("stat", MANIFEST_NAME, source))?;
    // The manifest lists at most every segment id; a megabyte is far past any real store.
    if length > 1024 * 1024 {
        return Err(StoreError::Corruption {
            file: MANIFEST_NAME.to_string(),
            offset: 0,
            reason: format!("manifest of {length} bytes is implausibly large"),
        });
    }
    let bytes = file
        .read_at(0, length as usize)
        .await
        .map_err(|source| io_error("read", MANIFEST_NAME, source))?;
    codec::decode_manifest(&bytes).map_err(|error| match error {
        ManifestError::UnknownVersion(found) => StoreError::UnknownFormatVersion {
            file: MANIFEST_NAME.to_string(),
            found,
            supported: codec::FORMAT_VERSION_ENCRYPTED,
        },
        ManifestError::Damaged(reason) => StoreError::Corruption {
            file: MANIFEST_NAME.to_string(),
            offset: 0,
            reason,
        },
    })
}

/// Replaces the manifest atomically and durably. Returns the fdatasyncs it made.
pub async fn write(disk: &dyn Disk, manifest: &ManifestData) -> Result<u64, StoreError> {
    let bytes = codec::encode_manifest(manifest);
    let tmp = MANIFEST_TMP_NAME;
    let file = create_empty(disk, tmp).await?;
    let written = file
        .write_at(0, &bytes)
        .await
        .map_err(|source| io_error("write", tmp, source))?;
    if written != bytes.len() {
        let short = std::io::Error::other(format!("short write: {written} of {}", bytes.len()));
        return Err(io_error("write", tmp, short));
    }
    install(disk, file, tmp, MANIFEST_NAME).await?;
    Ok(1)
}

/// Opens the temporary file `tmp` empty: a leftover from a crash may be longer than what is
/// written now. `install` puts it in place once written.
pub async fn create_empty(
    disk: &dyn Disk,
    tmp: &str,
) -> Result<std::rc::Rc<dyn crate::DiskFile>, StoreError> {
    let file = disk
        .open_file(tmp, true)
        .await
        .map_err(|source| io_error("create", tmp, source))?;
    file.truncate(0)
        .await
        .map_err(|source| io_error("truncate", tmp, source))?;
    Ok(file)
}

/// Makes the fully written temporary file `tmp` durable and puts it in place as `name`:
/// fdatasync, rename over `name`, fsync of the directory. A crash leaves the old `name` or the
/// new one, whole.
pub async fn install(
    disk: &dyn Disk,
    file: std::rc::Rc<dyn crate::DiskFile>,
    tmp: &str,
    name: &str,
) -> Result<(), StoreError> {
    file.fdatasync()
        .await
        .map_err(|source| io_error("fdatasync", tmp, source))?;
    drop(file);
    disk.rename(tmp, name)
        .await
        .map_err(|source| io_error("rename", name, source))?;
    disk.sync_dir()
        .await
        .map_err(|source| io_error("sync_dir", name, source))
}
