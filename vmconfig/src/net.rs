//! A net device's configuration: its tap (by name or inherited fd), MAC and MTU.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// MTU range the guest driver accepts (Linux refuses the MTU feature below 68).
pub const MIN_MTU: u16 = 68;
/// Longest tap name (IFNAMSIZ less the NUL).
pub const MAX_TAP_NAME: usize = libc::IFNAMSIZ - 1;

/// An Ethernet MAC address, written `02:00:00:aa:bb:cc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally administered unicast address.
    pub fn random() -> std::io::Result<Self> {
        let mut b = [0u8; 6];
        // SAFETY: getrandom writes at most `b.len()` bytes into the buffer it is given.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            return Err(std::io::Error::last_os_error());
        }
        b[0] = (b[0] & !0x01) | 0x02;
        Ok(Self(b))
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetConfigError::BadMac(s.to_string());
        let mut b = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut b {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        let mac = Self(b);
        if mac.is_multicast() || b == [0; 6] {
            return Err(NetConfigError::NotUnicast(s.to_string()));
        }
        Ok(mac)
    }
}

impl TryFrom<String> for MacAddr {
    type Error = NetConfigError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> Self {
        m.to_string()
    }
}

/// Errors in a net device's configuration, found before the guest runs.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    #[error("Invalid MAC address {0:?}: expected six hex bytes like 02:00:00:aa:bb:cc")]
    BadMac(String),
    #[error("MAC address {0} is not a unicast address")]
    NotUnicast(String),
    #[error("A net device needs exactly one of tap=NAME and fd=N")]
    Backend,
    #[error(
        "Tap name {0:?} must have 1 to {MAX_TAP_NAME} bytes and no '/', ',', ':' or whitespace"
    )]
    BadTapName(String),
    #[error("Tap fd {0} is not an open file descriptor")]
    FdNotOpen(i32),
    #[error("Tap fd {0} is one of stdin, stdout and stderr")]
    StdioFd(i32),
    #[error("MTU {0} is out of range ({MIN_MTU}..=65535)")]
    Mtu(u16),
    #[error("Invalid net option {item:?}: expected tap=NAME|fd=N[,mac=MAC][,mtu=N]")]
    BadOption { item: String },
}

/// A net device as configured: CLI `--net tap=NAME|fd=N[,mac=MAC][,mtu=N]` or JSON
/// `{"tap": "tap0", "mac": "02:00:00:00:00:01", "mtu": 1500}` / `{"fd": 3}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// A tap to open by name from /dev/net/tun (created if it does not exist, which needs
    /// CAP_NET_ADMIN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// An open tap fd inherited from the parent (the shim opens the tap in the pod's
    /// network namespace): it must be a tap with IFF_NO_PI and IFF_VNET_HDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// The guest's MAC address; a random locally administered one if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Offered to the guest with VIRTIO_NET_F_MTU (the guest's eth0 MTU and its maximum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

impl NetConfig {
    /// Checks everything short of opening the tap: [`Self::check_shape`] and that the fd
    /// is open.
    pub fn validate(&self) -> Result<(), NetConfigError> {
        self.check_shape()?;
        if let Some(fd) = self.fd {
            // SAFETY: F_GETFD only reads the descriptor's flags; any integer is safe to ask.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(NetConfigError::FdNotOpen(fd));
            }
        }
        Ok(())
    }

    /// What the text of the config says: one backend, a usable tap name or fd number, the
    /// MTU range (the command line's parser checks this much).
    pub fn check_shape(&self) -> Result<(), NetConfigError> {
        match (&self.tap, self.fd) {
            (Some(name), None) => {
                if name.is_empty()
                    || name.len() > MAX_TAP_NAME
                    || name
                        .contains(|c: char| c == '/' || c == ',' || c == ':' || c.is_whitespace())
                {
                    return Err(NetConfigError::BadTapName(name.clone()));
                }
            }
            (None, Some(fd)) => {
                if (0..=2).contains(&fd) {
                    return Err(NetConfigError::StdioFd(fd));
                }
                if fd < 0 {
                    return Err(NetConfigError::FdNotOpen(fd));
                }
            }
            _ => return Err(NetConfigError::Backend),
        }
        match self.mtu {
            Some(m) if m < MIN_MTU => Err(NetConfigError::Mtu(m)),
            _ => Ok(()),
        }
    }

    /// How the device names its backend in messages: `tap NAME` or `fd N`.
    pub fn describe(&self) -> String {
        match (&self.tap, self.fd) {
            (Some(name), _) => format!("tap {name}"),
            (None, Some(fd)) => format!("fd {fd}"),
            (None, None) => "(no backend)".into(),
        }
    }
}

impl FromStr for NetConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cfg = NetConfig {
            tap: None,
            fd: None,
            mac: None,
            mtu: None,
        };
        for item in s.split(',') {
            let bad = || NetConfigError::BadOption { item: item.into() }.to_string();
            match item.split_once('=') {
                Some(("tap", v)) if cfg.tap.is_none() => cfg.tap = Some(v.to_string()),
                Some(("fd", v)) if cfg.fd.is_none() => cfg.fd = Some(v.parse().map_err(|_| bad())?),
                Some(("mac", v)) if cfg.mac.is_none() => {
                    cfg.mac = Some(v.parse().map_err(|e: NetConfigError| e.to_string())?)
                }
                Some(("mtu", v)) if cfg.mtu.is_none() => {
                    cfg.mtu = Some(v.parse().map_err(|_| bad())?)
                }
                _ => return Err(bad()),
            }
        }
        cfg.check_shape().map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn mac_parse_and_print() {
        let m: MacAddr = "02:00:0a:Bb:cc:ff".parse().unwrap();
        assert_eq!(m.0, [2, 0, 0x0a, 0xbb, 0xcc, 0xff]);
        assert_eq!(m.to_string(), "02:00:0a:bb:cc:ff");
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:0:0:0:0:1",
            "zz:00:00:00:00:01",
            "02-00-00-00-00-01",
        ] {
            assert!(
                matches!(bad.parse::<MacAddr>(), Err(NetConfigError::BadMac(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "01:00:5e:00:00:01".parse::<MacAddr>(),
            Err(NetConfigError::NotUnicast(_))
        ));
        assert!(matches!(
            "00:00:00:00:00:00".parse::<MacAddr>(),
            Err(NetConfigError::NotUnicast(_))
        ));
        for _ in 0..16 {
            let r = MacAddr::random().unwrap();
            assert_eq!(r.0[0] & 0x03, 0x02, "{r}");
        }
    }

    #[test]
    fn cli_form() {
        let c: NetConfig = "tap=tap0,mac=02:00:00:00:00:01,mtu=1400".parse().unwrap();
        assert_eq!(c.tap.as_deref(), Some("tap0"));
        assert_eq!(c.fd, None);
        assert_eq!(c.mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
        assert_eq!(c.mtu, Some(1400));
        let c: NetConfig = "tap=t".parse().unwrap();
        assert_eq!((c.mac, c.mtu), (None, None));
        // An fd that is open in this process (the test harness has fds past 2 open, but
        // make sure with one of our own).
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let c: NetConfig = format!("fd={fd},mac=02:aa:00:00:00:01").parse().unwrap();
        assert_eq!(c.fd, Some(fd));
        for bad in [
            "",
            "mac=02:00:00:00:00:01",
            "tap=a,fd=3",
            "tap=",
            "tap=a/b",
            "tap=0123456789abcdef",
            "tap=a,tap=b",
            "tap=a,mac=xx",
            "tap=a,mac=03:00:00:00:00:01",
            "tap=a,mtu=10",
            "tap=a,mtu=70000",
            "tap=a,speed=10",
            "fd=x",
            "fd=1",
            "fd=-1",
        ] {
            assert!(bad.parse::<NetConfig>().is_err(), "{bad:?} parsed");
        }
        let e = "tap=a,mac=xx".parse::<NetConfig>().unwrap_err();
        assert!(e.contains("Invalid MAC address \"xx\""), "{e}");
        // 15 bytes is the longest name.
        assert!("tap=0123456789abcde".parse::<NetConfig>().is_ok());
    }

    #[test]
    fn closed_fd_is_refused() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        drop(f);
        let c = NetConfig {
            tap: None,
            fd: Some(fd),
            mac: None,
            mtu: None,
        };
        assert!(matches!(c.validate(), Err(NetConfigError::FdNotOpen(n)) if n == fd));
    }

    #[test]
    fn serde_form() {
        let c: NetConfig =
            serde_json::from_str(r#"{"tap": "tap0", "mac": "02:00:00:00:00:09", "mtu": 9000}"#)
                .unwrap();
        assert_eq!(c.mac, Some(MacAddr([2, 0, 0, 0, 0, 9])));
        assert_eq!(c.mtu, Some(9000));
        c.validate().unwrap();
        let back: NetConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let c: NetConfig = serde_json::from_str(r#"{"fd": 3}"#).unwrap();
        assert_eq!(c.fd, Some(3));
        assert!(serde_json::from_str::<NetConfig>(r#"{"tap": "t", "queues": 2}"#).is_err());
        let e = serde_json::from_str::<NetConfig>(r#"{"tap": "t", "mac": "nope"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Invalid MAC address"), "{e}");
        // Both or neither backend: parsed, refused by validate.
        let c: NetConfig = serde_json::from_str(r#"{"tap": "t", "fd": 5}"#).unwrap();
        assert!(matches!(c.validate(), Err(NetConfigError::Backend)));
        let c: NetConfig = serde_json::from_str(r#"{}"#).unwrap();
        assert!(matches!(c.validate(), Err(NetConfigError::Backend)));
    }
}
