//! Object ids and their placement on cores.
//!
//! An id is 32 bytes, shown as 64 lowercase hex digits:
//! - bytes 0..8 are the class tag, the first 8 bytes of SHA-256("stead-class\0" ‖ class), so an
//!   id names its class and `id_from_string` can refuse an id of another class;
//! - bytes 8..32 are SHA-256("stead-name\0" ‖ class ‖ "\0" ‖ name) for a named id, with the top
//!   bit of byte 8 cleared, or 24 random bytes (191 bits of entropy) with that bit set for a
//!   unique id, so the two kinds never collide.
//!
//! "class" above is the class's id namespace: its own name, or for a class renamed by a
//! migration the first name of its rename chain (`object/migration.rs`), so that its ids stay
//! what they were. The tag is all of a class that is stored; its name never is.
//!
//! Placement: an id maps to one of `partitions` partitions, fixed when the data directory is
//! created; partition `p` belongs to core `p % cores`. The partition is taken from the id's own
//! last 8 bytes, which are already the output of a keyed hash (SHA-256 keyed by class) or random:
//! unlike a hasher's output, they can never change with a library version, and the data on disk
//! depends on the mapping staying put.

use std::fmt;

use sha2::{Digest, Sha256};

/// The identity of one object: 32 bytes, stable for a (class, name) pair.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

/// Why a string is not a valid id for a class.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdError {
    /// Not 64 hex digits.
    Malformed { length: usize },
    /// A valid id, but of another class.
    WrongClass,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Malformed { length } => {
                write!(
                    f,
                    "an object id is 64 lowercase hex digits, got {length} characters"
                )
            }
            IdError::WrongClass => write!(f, "the object id belongs to another class"),
        }
    }
}

impl std::error::Error for IdError {}

/// The top bit of byte 8: set for unique ids, clear for named ones.
const UNIQUE_BIT: u8 = 0x80;

/// The first 8 bytes of every id of a class: what the data on disk says of an object's class.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassTag(pub [u8; 8]);

impl ClassTag {
    /// The tag of the ids made in `namespace` (a class's name, or its first name if renamed).
    pub fn of(namespace: &str) -> ClassTag {
        let digest = Sha256::new()
            .chain_update(b"stead-class\0")
            .chain_update(namespace.as_bytes())
            .finalize();
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&digest[..8]);
        ClassTag(tag)
    }
}

impl fmt::Display for ClassTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ClassTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClassTag({self})")
    }
}

impl ObjectId {
    /// The id of the object called `name` in `class`: the same inputs give the same id.
    pub fn from_name(class: &str, name: &str) -> ObjectId {
        let digest = Sha256::new()
            .chain_update(b"stead-name\0")
            .chain_update(class.as_bytes())
            .chain_update(b"\0")
            .chain_update(name.as_bytes())
            .finalize();
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&ClassTag::of(class).0);
        bytes[8..].copy_from_slice(&digest[..24]);
        bytes[8] &= !UNIQUE_BIT;
        ObjectId(bytes)
    }

    /// A fresh random id in `class`, from the operating system's random source.
    pub fn new_unique(class: &str) -> Result<ObjectId, getrandom::Error> {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&ClassTag::of(class).0);
        getrandom::fill(&mut bytes[8..])?;
        bytes[8] |= UNIQUE_BIT;
        Ok(ObjectId(bytes))
    }

    /// Parses 64 lowercase hex digits and checks that the id belongs to `class`.
    pub fn from_string(class: &str, text: &str) -> Result<ObjectId, IdError> {
        let raw = text.as_bytes();
        if raw.len() != 64 {
            return Err(IdError::Malformed { length: raw.len() });
        }
        let mut bytes = [0u8; 32];
        for (index, pair) in raw.chunks_exact(2).enumerate() {
            let high = hex_value(pair[0]).ok_or(IdError::Malformed { length: raw.len() })?;
            let low = hex_value(pair[1]).ok_or(IdError::Malformed { length: raw.len() })?;
            bytes[index] = (high << 4) | low;
        }
        if ObjectId(bytes).class_tag() != ClassTag::of(class) {
            return Err(IdError::WrongClass);
        }
        Ok(ObjectId(bytes))
    }

    /// The tag of the class (namespace) this id was made in.
    pub fn class_tag(&self) -> ClassTag {
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&self.0[..8]);
        ClassTag(tag)
    }

    /// True for ids made by `new_unique`.
    pub fn is_unique(&self) -> bool {
        self.0[8] & UNIQUE_BIT != 0
    }

    /// The partition of this id among `partitions` (fixed per data directory).
    pub fn partition(&self, partitions: u32) -> u32 {
        debug_assert!(partitions > 0);
        let mut tail = [0u8; 8];
        tail.copy_from_slice(&self.0[24..]);
        (u64::from_le_bytes(tail) % u64::from(partitions)) as u32
    }

    /// The core that owns this id when `cores` cores serve `partitions` partitions.
    pub fn core(&self, partitions: u32, cores: usize) -> usize {
        debug_assert!(cores > 0);
        self.partition(partitions) as usize % cores
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_ids_are_deterministic_and_keyed_by_class() {
        let a = ObjectId::from_name("counter", "x");
        assert_eq!(a, ObjectId::from_name("counter", "x"));
        assert_ne!(a, ObjectId::from_name("ratelimiter", "x"));
        assert_ne!(a, ObjectId::from_name("counter", "y"));
        assert!(!a.is_unique());
    }

    #[test]
    fn ids_round_trip_through_text_and_refuse_other_classes() {
        let id = ObjectId::new_unique("counter").expect("random source");
        assert!(id.is_unique());
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(ObjectId::from_string("counter", &text), Ok(id));
        assert_eq!(
            ObjectId::from_string("lock", &text),
            Err(IdError::WrongClass)
        );
        assert_eq!(
            ObjectId::from_string("counter", "abc"),
            Err(IdError::Malformed { length: 3 })
        );
        let upper = text.to_uppercase();
        assert!(ObjectId::from_string("counter", &upper).is_err() || upper == text);
    }

    #[test]
    fn unique_ids_differ() {
        let a = ObjectId::new_unique("c").expect("random source");
        let b = ObjectId::new_unique("c").expect("random source");
        assert_ne!(a, b);
    }

    #[test]
    fn placement_is_stable_and_spreads() {
        let mut per_core = [0u32; 4];
        for n in 0..4000 {
            let id = ObjectId::from_name("counter", &n.to_string());
            assert_eq!(id.partition(4096), id.partition(4096));
            per_core[id.core(4096, 4)] += 1;
        }
        for count in per_core {
            assert!(
                (800..1200).contains(&count),
                "uneven placement {per_core:?}"
            );
        }
    }
}
