//! The real [`NetHost`]: netlink (husk-netlink, with its `tc` module) and /dev/net/tun,
//! in the pod's network namespace, entered on a thread that does nothing else.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use husk_netlink::{address, link, route, tc, Socket};

use super::{tap, AddrInfo, HostError, LinkInfo, NetError, NetHost, RouteInfo};

/// A netlink socket opened in the pod's netns.
pub struct RealNet {
    sock: Socket,
}

impl NetHost for RealNet {
    fn links(&mut self) -> Result<Vec<LinkInfo>, HostError> {
        Ok(link::list(&mut self.sock)?
            .into_iter()
            .map(|l| LinkInfo {
                index: l.index,
                loopback: l.is_loopback(),
                mac: l.mac.map(|m| m.0),
                mtu: l.mtu,
                name: l.name,
            })
            .collect())
    }

    fn addresses(&mut self) -> Result<Vec<AddrInfo>, HostError> {
        Ok(address::list(&mut self.sock)?
            .into_iter()
            .map(|a| AddrInfo {
                index: a.index,
                addr: a.net.addr(),
                prefix_len: a.net.prefix_len(),
            })
            .collect())
    }

    fn routes(&mut self) -> Result<Vec<RouteInfo>, HostError> {
        Ok(route::list(&mut self.sock, None)?
            .into_iter()
            .map(|r| RouteInfo {
                table: r.table,
                protocol: r.protocol,
                route_type: r.kind,
                dst: (!r.destination.is_default())
                    .then(|| (r.destination.addr(), r.destination.prefix_len())),
                gateway: r.gateway,
                oif: r.device,
                prefsrc: r.source,
                priority: Some(r.metric).filter(|m| *m != 0),
            })
            .collect())
    }

    fn link_index(&mut self, name: &str) -> Result<Option<u32>, HostError> {
        Ok(link::by_name(&mut self.sock, name)?.map(|l| l.index))
    }

    fn create_tap(&mut self, name: &str) -> Result<OwnedFd, HostError> {
        Ok(tap::create_tap(name)?)
    }

    fn set_mtu_up(&mut self, index: u32, mtu: u32) -> Result<(), HostError> {
        link::set_mtu(&mut self.sock, index, mtu)?;
        link::set_up(&mut self.sock, index)?;
        Ok(())
    }

    fn add_ingress(&mut self, index: u32) -> Result<(), HostError> {
        Ok(tc::add_ingress_qdisc(&mut self.sock, index)?)
    }

    fn add_redirect(&mut self, from: u32, to: u32) -> Result<(), HostError> {
        Ok(tc::add_redirect_filter(&mut self.sock, from, to)?)
    }

    fn del_ingress(&mut self, index: u32) -> Result<bool, HostError> {
        Ok(tc::del_ingress_qdisc(&mut self.sock, index)?)
    }

    fn del_link(&mut self, index: u32) -> Result<(), HostError> {
        Ok(link::delete(&mut self.sock, index)?)
    }
}

/// Runs `f` on a new thread that first enters the network namespace at `netns`
/// (setns(CLONE_NEWNET)) and opens a netlink socket there. The thread ends with `f`,
/// so nothing else ever runs in that netns; the taps `f` creates live there.
pub fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce(&mut dyn NetHost) -> Result<T, NetError> + Send,
) -> Result<T, NetError> {
    on_thread_in(netns, || {
        let sock = Socket::new().map_err(|source| NetError::Host {
            netns: netns.to_owned(),
            what: "open a netlink socket".into(),
            source: source.into(),
        })?;
        f(&mut RealNet { sock })
    })
}

/// Runs `f` on a new thread that first enters the network namespace at `netns`
/// (setns(CLONE_NEWNET)); sockets `f` creates belong to that namespace for good. The
/// thread ends with `f`, so nothing else of ours ever runs in the namespace.
pub fn on_thread_in<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, NetError> + Send,
) -> Result<T, NetError> {
    std::thread::scope(|s| {
        let thread = std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(s, || {
                let file = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(netns)
                    .map_err(|source| NetError::OpenNetns {
                        netns: netns.to_owned(),
                        source,
                    })?;
                // SAFETY: setns with an fd we own; it changes only this thread's network
                // namespace, which no other code of ours runs on.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(NetError::EnterNetns {
                        netns: netns.to_owned(),
                        source: std::io::Error::last_os_error(),
                    });
                }
                drop(file);
                f()
            })
            .map_err(|source| NetError::Thread {
                netns: netns.to_owned(),
                source,
            })?;
        match thread.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
