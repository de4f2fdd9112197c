//! An in-memory network namespace for the set-up and teardown logic's tests.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::OwnedFd;

use super::{AddrInfo, HostError, LinkInfo, NetHost, RouteInfo};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLink {
    pub info: LinkInfo,
    pub up: bool,
}

/// A netns: links, ingress qdiscs (by ifindex) and redirects (from, to). `fail_at`
/// names an operation and which of its calls (1 = the first) fails with EPERM.
#[derive(Debug, Default, Clone)]
pub struct FakeNet {
    pub links: Vec<FakeLink>,
    pub addrs: Vec<AddrInfo>,
    pub routes: Vec<RouteInfo>,
    pub qdiscs: BTreeSet<u32>,
    pub filters: BTreeSet<(u32, u32)>,
    pub calls: Vec<String>,
    pub fail_at: Option<(&'static str, usize)>,
}

impl FakeNet {
    /// A CNI-made netns: `lo` (1) and `eth0` (2, MTU 1450, 10.88.0.5/16, default route
    /// via 10.88.0.1).
    pub fn cni() -> Self {
        let link = |index, name: &str, loopback, mac| FakeLink {
            info: LinkInfo {
                index,
                name: name.into(),
                loopback,
                mac: Some(mac),
                mtu: if loopback { 65536 } else { 1450 },
            },
            up: true,
        };
        Self {
            links: vec![
                link(1, "lo", true, [0; 6]),
                link(2, "eth0", false, [0x0a, 0x58, 0x0a, 0x58, 0, 5]),
            ],
            addrs: vec![AddrInfo {
                index: 2,
                addr: "10.88.0.5".parse().unwrap(),
                prefix_len: 16,
            }],
            routes: vec![RouteInfo {
                table: super::plan::RT_TABLE_MAIN,
                protocol: 3,
                route_type: super::plan::RTN_UNICAST,
                dst: None,
                gateway: Some("10.88.0.1".parse().unwrap()),
                oif: Some(2),
                prefsrc: None,
                priority: None,
            }],
            ..Self::default()
        }
    }

    pub fn link(&self, name: &str) -> Option<&FakeLink> {
        self.links.iter().find(|l| l.info.name == name)
    }

    fn call(&mut self, op: &'static str, what: String) -> Result<(), HostError> {
        self.calls.push(format!("{op} {what}"));
        if let Some((f, n)) = self.fail_at {
            let count = self
                .calls
                .iter()
                .filter(|c| c.split(' ').next() == Some(op))
                .count();
            if f == op && count == n {
                return Err(HostError::Io(io::Error::from_raw_os_error(libc::EPERM)));
            }
        }
        Ok(())
    }

    fn exists(&self, index: u32) -> Result<(), HostError> {
        if self.links.iter().any(|l| l.info.index == index) {
            Ok(())
        } else {
            Err(HostError::Io(io::Error::from_raw_os_error(libc::ENODEV)))
        }
    }
}

impl NetHost for FakeNet {
    fn links(&mut self) -> Result<Vec<LinkInfo>, HostError> {
        self.call("links", String::new())?;
        Ok(self.links.iter().map(|l| l.info.clone()).collect())
    }

    fn addresses(&mut self) -> Result<Vec<AddrInfo>, HostError> {
        self.call("addresses", String::new())?;
        Ok(self.addrs.clone())
    }

    fn routes(&mut self) -> Result<Vec<RouteInfo>, HostError> {
        self.call("routes", String::new())?;
        Ok(self.routes.clone())
    }

    fn link_index(&mut self, name: &str) -> Result<Option<u32>, HostError> {
        self.call("link_index", name.into())?;
        Ok(self.link(name).map(|l| l.info.index))
    }

    fn create_tap(&mut self, name: &str) -> Result<OwnedFd, HostError> {
        self.call("create_tap", name.into())?;
        if self.link(name).is_some() {
            return Err(HostError::Io(io::Error::from_raw_os_error(libc::EBUSY)));
        }
        let index = self.links.iter().map(|l| l.info.index).max().unwrap_or(0) + 1;
        self.links.push(FakeLink {
            info: LinkInfo {
                index,
                name: name.into(),
                loopback: false,
                mac: Some([2, 0, 0, 0, 0, index as u8]),
                mtu: 1500,
            },
            up: false,
        });
        Ok(OwnedFd::from(std::fs::File::open("/dev/null")?))
    }

    fn set_mtu_up(&mut self, index: u32, mtu: u32) -> Result<(), HostError> {
        self.call("set_mtu_up", format!("{index} {mtu}"))?;
        self.exists(index)?;
        let l = self
            .links
            .iter_mut()
            .find(|l| l.info.index == index)
            .expect("checked");
        l.info.mtu = mtu;
        l.up = true;
        Ok(())
    }

    fn add_ingress(&mut self, index: u32) -> Result<(), HostError> {
        self.call("add_ingress", index.to_string())?;
        self.exists(index)?;
        if !self.qdiscs.insert(index) {
            return Err(HostError::Io(io::Error::from_raw_os_error(libc::EEXIST)));
        }
        Ok(())
    }

    fn add_redirect(&mut self, from: u32, to: u32) -> Result<(), HostError> {
        self.call("add_redirect", format!("{from} {to}"))?;
        self.exists(from)?;
        self.exists(to)?;
        if !self.qdiscs.contains(&from) {
            return Err(HostError::Io(io::Error::from_raw_os_error(libc::EINVAL)));
        }
        self.filters.insert((from, to));
        Ok(())
    }

    fn del_ingress(&mut self, index: u32) -> Result<bool, HostError> {
        self.call("del_ingress", index.to_string())?;
        self.filters.retain(|(f, _)| *f != index);
        Ok(self.qdiscs.remove(&index))
    }

    fn del_link(&mut self, index: u32) -> Result<(), HostError> {
        self.call("del_link", index.to_string())?;
        self.exists(index)?;
        self.links.retain(|l| l.info.index != index);
        self.qdiscs.remove(&index);
        self.filters.retain(|(f, _)| *f != index);
        Ok(())
    }
}
