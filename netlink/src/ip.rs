//! IP networks: an address with its prefix length, as `ip` writes it
//! ("10.88.0.5/16", "fd00::5/64"), and address families.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why a network or address did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Not an IP address: {0:?}")]
    Address(String),
    #[error("Not a prefix length: {0:?}")]
    Prefix(String),
    #[error("Prefix length {prefix_len} is over {max} for {addr}")]
    PrefixTooLong {
        addr: IpAddr,
        prefix_len: u32,
        max: u8,
    },
    #[error("Not a MAC address (aa:bb:cc:dd:ee:ff): {0:?}")]
    Mac(String),
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// The longest prefix: 32 or 128.
    pub fn max_prefix(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }

    /// The unspecified address, 0.0.0.0 or ::.
    pub fn unspecified(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Self::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "inet",
            Self::V6 => "inet6",
        })
    }
}

/// An address and a prefix length that fits its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpNet {
    /// Checks that the prefix fits the family (at most 32 or 128).
    pub fn new(addr: IpAddr, prefix_len: u32) -> Result<Self, ParseError> {
        let max = Family::of(&addr).max_prefix();
        match u8::try_from(prefix_len) {
            Ok(p) if p <= max => Ok(Self {
                addr,
                prefix_len: p,
            }),
            _ => Err(ParseError::PrefixTooLong {
                addr,
                prefix_len,
                max,
            }),
        }
    }

    /// A host route's network: the address with the full prefix.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix_len: Family::of(&addr).max_prefix(),
        }
    }

    /// The default network of a family: 0.0.0.0/0 or ::/0.
    pub fn default_of(family: Family) -> Self {
        Self {
            addr: family.unspecified(),
            prefix_len: 0,
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    /// Whether this is 0.0.0.0/0 or ::/0.
    pub fn is_default(&self) -> bool {
        self.prefix_len == 0
    }

    /// The network: the address with the bits past the prefix cleared.
    pub fn network(&self) -> Self {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Self {
            addr,
            prefix_len: self.prefix_len,
        }
    }

    /// Whether the address has no bits set past the prefix (what a route's
    /// destination must be).
    pub fn is_network(&self) -> bool {
        self.network().addr == self.addr
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        Family::of(ip) == self.family()
            && IpNet {
                addr: *ip,
                prefix_len: self.prefix_len,
            }
            .network()
                == self.network()
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for IpNet {
    type Err = ParseError;

    /// "10.0.0.0/8", "fd00::/64"; a bare address is a host network.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| ParseError::Address(addr.to_string()))?;
        match prefix {
            None => Ok(Self::host(addr)),
            Some(p) => {
                let p: u32 = p
                    .parse()
                    .ok()
                    .filter(|_| !p.starts_with('+'))
                    .ok_or_else(|| ParseError::Prefix(p.to_string()))?;
                Self::new(addr, p)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(net("10.88.0.5/16").to_string(), "10.88.0.5/16");
        assert_eq!(net("fd00::5/64").to_string(), "fd00::5/64");
        assert_eq!(net("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(net("::1").to_string(), "::1/128");
        assert_eq!(net("0.0.0.0/0").family(), Family::V4);
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "fd00::/129",
            "x/8",
            "10.0.0.0/+8",
            "10/8",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
        assert!(matches!(
            IpNet::new("10.0.0.1".parse().unwrap(), 300),
            Err(ParseError::PrefixTooLong { max: 32, .. })
        ));
    }

    #[test]
    fn networks_and_membership() {
        assert_eq!(net("10.88.7.5/16").network(), net("10.88.0.0/16"));
        assert_eq!(net("10.88.7.5/0").network(), net("0.0.0.0/0"));
        assert_eq!(net("10.88.7.5/32").network(), net("10.88.7.5/32"));
        assert_eq!(net("fd00::1:5/64").network(), net("fd00::/64"));
        assert_eq!(net("fd00::1:5/0").network(), net("::/0"));
        assert!(net("10.88.0.0/16").is_network());
        assert!(!net("10.88.0.1/16").is_network());
        assert!(net("10.88.0.0/16").contains(&"10.88.255.1".parse().unwrap()));
        assert!(!net("10.88.0.0/16").contains(&"10.89.0.1".parse().unwrap()));
        assert!(!net("10.88.0.0/16").contains(&"::1".parse().unwrap()));
        assert!(net("::/0").contains(&"fd00::1".parse().unwrap()));
        assert!(IpNet::default_of(Family::V6).is_default());
        assert_eq!(IpNet::default_of(Family::V4).to_string(), "0.0.0.0/0");
    }
}
