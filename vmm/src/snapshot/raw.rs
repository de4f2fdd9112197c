//! KVM state structures in the snapshot's JSON: each one is its exact bytes, as a hex
//! string. The structures are plain data KVM itself defines (`kvm_regs`, `kvm_lapic_state`,
//! ...), so any bytes are a value of the type; what is checked is the length, exactly: a
//! string of the wrong length is an error, never a value padded with zeros or cut short.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A KVM structure saved as its bytes.
#[derive(Clone, Copy)]
pub struct Raw<T>(pub T);

impl<T> fmt::Debug for Raw<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Raw<{}>", std::any::type_name::<T>())
    }
}

impl<T: IntoBytes + Immutable> Serialize for Raw<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_hex(self.0.as_bytes()))
    }
}

impl<'de, T: FromBytes> Deserialize<'de> for Raw<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = d.deserialize_str(HexVisitor {
            len: Some(std::mem::size_of::<T>()),
            max: std::mem::size_of::<T>(),
        })?;
        T::read_from_bytes(&bytes)
            .map(Raw)
            .map_err(|_| de::Error::custom("wrong length for a KVM structure"))
    }
}

/// Bytes of a length known only at run time (XSAVE areas), as hex, at most `MAX` bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Bytes<const MAX: usize>(pub Vec<u8>);

impl<const MAX: usize> fmt::Debug for Bytes<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl<const MAX: usize> Serialize for Bytes<MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_hex(&self.0))
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for Bytes<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(HexVisitor {
            len: None,
            max: MAX,
        })
        .map(Bytes)
    }
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Errors decoding hex.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    #[error("Hex string of odd length {0}")]
    OddLength(usize),
    #[error("Not a hex digit at position {0}")]
    BadDigit(usize),
}

/// Decodes lower- or upper-case hex.
pub fn from_hex(s: &str) -> Result<Vec<u8>, HexError> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return Err(HexError::OddLength(s.len()));
    }
    let digit = |i: usize| -> Result<u8, HexError> {
        match s[i] {
            c @ b'0'..=b'9' => Ok(c - b'0'),
            c @ b'a'..=b'f' => Ok(c - b'a' + 10),
            c @ b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(HexError::BadDigit(i)),
        }
    };
    (0..s.len() / 2)
        .map(|i| Ok((digit(2 * i)? << 4) | digit(2 * i + 1)?))
        .collect()
}

struct HexVisitor {
    /// The exact length in bytes, if fixed.
    len: Option<usize>,
    max: usize,
}

impl Visitor<'_> for HexVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.len {
            Some(n) => write!(f, "a hex string of {n} bytes"),
            None => write!(f, "a hex string of at most {} bytes", self.max),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        // Checked before decoding, so an oversized string costs no allocation.
        let bytes = v.len() / 2;
        if self.len.is_some_and(|n| n != bytes) || bytes > self.max {
            return Err(E::invalid_length(bytes, &self));
        }
        from_hex(v).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use kvm_bindings::{kvm_lapic_state, kvm_regs};

    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let data = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(to_hex(&data), "00017f80ff");
        assert_eq!(from_hex("00017F80ff").unwrap(), data);
        assert_eq!(from_hex("abc"), Err(HexError::OddLength(3)));
        assert_eq!(from_hex("0g"), Err(HexError::BadDigit(1)));
        assert_eq!(from_hex("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn kvm_structures_round_trip_exactly() {
        let regs = kvm_regs {
            rip: 0xffff_ffff_8100_0000,
            rsp: 0x1234,
            rflags: 0x246,
            ..Default::default()
        };
        let json = serde_json::to_string(&Raw(regs)).unwrap();
        assert_eq!(json.len(), 2 + 2 * std::mem::size_of::<kvm_regs>());
        let back: Raw<kvm_regs> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.0.rip, regs.rip);
        assert_eq!(back.0.rflags, regs.rflags);

        let mut lapic = kvm_lapic_state::default();
        lapic.regs[0x20] = 7;
        let json = serde_json::to_string(&Raw(lapic)).unwrap();
        let back: Raw<kvm_lapic_state> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.0.regs[0x20], 7);
    }

    #[test]
    fn wrong_lengths_are_errors_not_padding() {
        let json = serde_json::to_string(&Raw(kvm_regs::default())).unwrap();
        let short = format!("\"{}\"", &json[1..json.len() - 3]);
        assert!(serde_json::from_str::<Raw<kvm_regs>>(&short).is_err());
        let long = format!("\"{}00\"", &json[1..json.len() - 1]);
        assert!(serde_json::from_str::<Raw<kvm_regs>>(&long).is_err());
        assert!(serde_json::from_str::<Raw<kvm_regs>>("[1, 2, 3]").is_err());
        assert!(serde_json::from_str::<Bytes<4>>("\"0102030405\"").is_err());
        assert_eq!(
            serde_json::from_str::<Bytes<4>>("\"01020304\"").unwrap().0,
            [1, 2, 3, 4]
        );
        assert!(serde_json::from_str::<Bytes<4>>("\"zz\"").is_err());
    }
}
