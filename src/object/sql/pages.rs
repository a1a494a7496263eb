//! [`PageFile`]: the bytes of an object's SQLite database file, as fixed-size pages held in
//! memory, and the storage keys the pages are stored under.
//!
//! SQLite sees one file per object. It is cut into `PAGE_BYTES` pages; page `n` (file offset
//! `n * PAGE_BYTES`) is stored as the value of the key `SQL_PAGE_KEY_PREFIX ‖ n` (4 bytes,
//! big-endian) in the object's own key-value space. The file's size is the number of pages
//! times `PAGE_BYTES`: SQLite's page size is pinned to `PAGE_BYTES`, so SQLite only writes
//! whole pages at page-aligned offsets, and the file never has a partial last page.
//!
//! This module knows nothing of SQLite or of the store: it keeps the pages and tells its caller
//! which pages a write or truncation changed, for the caller to record in the event's batch.

/// Bytes of one page, and SQLite's page size (pinned at open, refused in `PRAGMA page_size`).
pub const PAGE_BYTES: usize = 4096;

/// The prefix of every key holding a SQL page. It starts with the byte 0xFF, which no UTF-8
/// string starts with, so a key given as text can never collide with it; the key-value API
/// refuses keys that start with it (`StorageError::ReservedKey`).
pub const SQL_PAGE_KEY_PREFIX: &[u8] = b"\xffsql\x00";

/// Bytes of a page key: the prefix and a 4-byte page number.
const PAGE_KEY_BYTES: usize = SQL_PAGE_KEY_PREFIX.len() + 4;

/// Whether `key` lies in the reserved SQL page namespace.
pub fn is_page_key(key: &[u8]) -> bool {
    key.starts_with(SQL_PAGE_KEY_PREFIX)
}

/// The storage key of page `page`.
pub fn page_key(page: u32) -> [u8; PAGE_KEY_BYTES] {
    let mut key = [0u8; PAGE_KEY_BYTES];
    key[..SQL_PAGE_KEY_PREFIX.len()].copy_from_slice(SQL_PAGE_KEY_PREFIX);
    key[SQL_PAGE_KEY_PREFIX.len()..].copy_from_slice(&page.to_be_bytes());
    key
}

/// The page number a reserved key names, or `None` for a key of the wrong shape.
pub fn parse_page_key(key: &[u8]) -> Option<u32> {
    let number = key.strip_prefix(SQL_PAGE_KEY_PREFIX)?;
    Some(u32::from_be_bytes(number.try_into().ok()?))
}

/// Why pages could not be loaded into a [`PageFile`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// A key in the reserved namespace that is not a page key.
    MalformedKey { key_bytes: usize },
    /// A page value that is not exactly `PAGE_BYTES` long.
    MalformedPage { page: u32, value_bytes: usize },
    /// Page numbers with a gap: the file would have a hole no SQLite write makes.
    MissingPage { page: u32 },
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::MalformedKey { key_bytes } => {
                write!(f, "a SQL page key of {key_bytes} bytes")
            }
            LoadError::MalformedPage { page, value_bytes } => write!(
                f,
                "SQL page {page} holds {value_bytes} bytes, not {PAGE_BYTES}"
            ),
            LoadError::MissingPage { page } => write!(f, "SQL page {page} is missing"),
        }
    }
}

/// The database file of one object, whole, in memory.
#[derive(Debug, Default)]
pub struct PageFile {
    /// Page `n` of the file at index `n`; every page is `PAGE_BYTES` long.
    pages: Vec<Box<[u8]>>,
}

impl PageFile {
    /// The file made of `pages` (page number, value), in any order.
    pub fn load(pages: Vec<(Vec<u8>, Vec<u8>)>) -> Result<PageFile, LoadError> {
        let mut numbered = Vec::with_capacity(pages.len());
        for (key, value) in pages {
            let page = parse_page_key(&key).ok_or(LoadError::MalformedKey {
                key_bytes: key.len(),
            })?;
            if value.len() != PAGE_BYTES {
                return Err(LoadError::MalformedPage {
                    page,
                    value_bytes: value.len(),
                });
            }
            numbered.push((page, value.into_boxed_slice()));
        }
        numbered.sort_unstable_by_key(|(page, _)| *page);
        let mut file = PageFile::default();
        for (expected, (page, value)) in numbered.into_iter().enumerate() {
            if page as usize != expected {
                return Err(LoadError::MissingPage {
                    page: expected as u32,
                });
            }
            file.pages.push(value);
        }
        Ok(file)
    }

    /// The file's size in bytes.
    pub fn size_bytes(&self) -> u64 {
        (self.pages.len() * PAGE_BYTES) as u64
    }

    /// Reads `buffer.len()` bytes from `offset`; bytes past the end of the file read as zero.
    /// Returns whether the whole range was inside the file.
    pub fn read(&self, offset: u64, buffer: &mut [u8]) -> bool {
        let mut done = 0;
        while done < buffer.len() {
            let position = offset + done as u64;
            let page = (position / PAGE_BYTES as u64) as usize;
            let within = (position % PAGE_BYTES as u64) as usize;
            let count = (PAGE_BYTES - within).min(buffer.len() - done);
            match self.pages.get(page) {
                Some(bytes) => {
                    buffer[done..done + count].copy_from_slice(&bytes[within..within + count])
                }
                None => {
                    buffer[done..].fill(0);
                    return false;
                }
            }
            done += count;
        }
        true
    }

    /// Writes `data` at `offset`, growing the file with zero pages as needed, and calls
    /// `changed` with each page it wrote (number, old contents if the page existed, new
    /// contents). Stops at the first page `changed` refuses, returning its error; the pages
    /// before it stay written.
    pub fn write<E>(
        &mut self,
        offset: u64,
        data: &[u8],
        mut changed: impl FnMut(u32, Option<&[u8]>, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut done = 0;
        while done < data.len() {
            let position = offset + done as u64;
            let page = (position / PAGE_BYTES as u64) as usize;
            let within = (position % PAGE_BYTES as u64) as usize;
            let count = (PAGE_BYTES - within).min(data.len() - done);
            while self.pages.len() < page {
                // A hole before the written page: SQLite never makes one, but the file must
                // stay contiguous, so it is recorded as zeros like any other page.
                let hole = self.pages.len() as u32;
                changed(hole, None, &[0u8; PAGE_BYTES])?;
                self.pages.push(vec![0u8; PAGE_BYTES].into_boxed_slice());
            }
            let bytes = if count == PAGE_BYTES {
                // A whole page (SQLite's only kind of write to the main file): no need to
                // start from the old contents.
                data[done..done + count].to_vec()
            } else {
                let mut bytes = match self.pages.get(page) {
                    Some(bytes) => bytes.to_vec(),
                    None => vec![0u8; PAGE_BYTES],
                };
                bytes[within..within + count].copy_from_slice(&data[done..done + count]);
                bytes
            };
            changed(
                page as u32,
                self.pages.get(page).map(|old| &old[..]),
                &bytes,
            )?;
            if page == self.pages.len() {
                self.pages.push(bytes.into_boxed_slice());
            } else {
                self.pages[page] = bytes.into_boxed_slice();
            }
            done += count;
        }
        Ok(())
    }

    /// Cuts the file to `size_bytes` (rounded up to whole pages) and calls `removed` with each
    /// page it drops (number and contents), last first. Stops at the first page `removed`
    /// refuses.
    pub fn truncate<E>(
        &mut self,
        size_bytes: u64,
        mut removed: impl FnMut(u32, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let keep = size_bytes.div_ceil(PAGE_BYTES as u64) as usize;
        while let Some(last) = self.pages.last().filter(|_| self.pages.len() > keep) {
            removed((self.pages.len() - 1) as u32, last)?;
            self.pages.pop();
        }
        Ok(())
    }

    /// Drops every page (the object's storage was cleared or left memory).
    pub fn clear(&mut self) {
        self.pages = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_error(_: u32, _: Option<&[u8]>, _: &[u8]) -> Result<(), ()> {
        Ok(())
    }

    #[test]
    fn page_keys_round_trip_and_sort_by_page_number() {
        assert_eq!(parse_page_key(&page_key(7)), Some(7));
        assert!(page_key(1) < page_key(256));
        assert!(is_page_key(&page_key(0)));
        assert_eq!(parse_page_key(b"\xffsql\x00\x01"), None);
        assert!(!is_page_key("any text key".as_bytes()));
    }

    #[test]
    fn writes_read_back_and_reads_past_the_end_are_short_and_zero() {
        let mut file = PageFile::default();
        let data = vec![7u8; PAGE_BYTES * 2];
        let mut written = Vec::new();
        file.write(0, &data, |page, _, _| {
            written.push(page);
            Ok::<(), ()>(())
        })
        .expect("no refusal");
        assert_eq!(written, vec![0, 1]);
        assert_eq!(file.size_bytes(), 2 * PAGE_BYTES as u64);
        let mut buffer = vec![1u8; 100];
        assert!(file.read(PAGE_BYTES as u64 - 50, &mut buffer));
        assert!(buffer.iter().all(|byte| *byte == 7));
        assert!(!file.read(2 * PAGE_BYTES as u64 - 50, &mut buffer));
        assert!(buffer[..50].iter().all(|byte| *byte == 7));
        assert!(buffer[50..].iter().all(|byte| *byte == 0));
    }

    #[test]
    fn a_partial_write_keeps_the_rest_of_its_page() {
        let mut file = PageFile::default();
        file.write(0, &vec![1u8; PAGE_BYTES], no_error)
            .expect("no refusal");
        file.write(100, &[9u8; 10], no_error).expect("no refusal");
        let mut page = vec![0u8; PAGE_BYTES];
        assert!(file.read(0, &mut page));
        assert!(page[..100].iter().all(|byte| *byte == 1));
        assert!(page[100..110].iter().all(|byte| *byte == 9));
        assert!(page[110..].iter().all(|byte| *byte == 1));
    }

    #[test]
    fn truncate_drops_the_last_pages_first() {
        let mut file = PageFile::default();
        file.write(0, &vec![1u8; PAGE_BYTES * 3], no_error)
            .expect("no refusal");
        let mut removed = Vec::new();
        file.truncate(PAGE_BYTES as u64, |page, _| {
            removed.push(page);
            Ok::<(), ()>(())
        })
        .expect("no refusal");
        assert_eq!(removed, vec![2, 1]);
        assert_eq!(file.size_bytes(), PAGE_BYTES as u64);
    }

    #[test]
    fn a_refused_page_stops_the_write_and_leaves_it_unwritten() {
        let mut file = PageFile::default();
        let outcome = file.write(0, &vec![1u8; PAGE_BYTES * 2], |page, _, _| {
            if page == 1 {
                Err("full")
            } else {
                Ok(())
            }
        });
        assert_eq!(outcome, Err("full"));
        assert_eq!(file.size_bytes(), PAGE_BYTES as u64);
    }

    #[test]
    fn load_refuses_gaps_and_wrong_sizes() {
        let page = |number: u32, bytes: usize| (page_key(number).to_vec(), vec![0u8; bytes]);
        assert_eq!(
            PageFile::load(vec![page(1, PAGE_BYTES), page(0, PAGE_BYTES)])
                .map(|file| file.size_bytes()),
            Ok(2 * PAGE_BYTES as u64)
        );
        assert_eq!(
            PageFile::load(vec![page(1, PAGE_BYTES)]).map(|file| file.size_bytes()),
            Err(LoadError::MissingPage { page: 0 })
        );
        assert_eq!(
            PageFile::load(vec![page(0, 10)]).map(|file| file.size_bytes()),
            Err(LoadError::MalformedPage {
                page: 0,
                value_bytes: 10
            })
        );
    }
}
