//! A pod's network, Kata's tc-filter model: the CNI plugin's veth in the pod's network
//! namespace is joined to a tap of ours in the same netns by two `mirred egress
//! redirect` filters (veth ingress -> tap, tap ingress -> veth); husk-vmm serves the tap
//! as virtio-net and the agent gives the guest's link the veth's name, MAC, MTU,
//! addresses and routes. The veth keeps its addresses on the host side (CRI status and
//! port mappings read them there).
//!
//! Everything that happens in the netns runs on a thread of its own that enters it
//! ([`host::in_netns`]) and ends with it. The steps themselves are written against
//! [`NetHost`], so the set-up, its undo on failure and the teardown are unit-tested with
//! an in-memory double; the root tests in `host.rs` run them against the kernel.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use husk_protocol::agent;

use crate::persist::{self, PersistError};
use tracing::{info, warn};

mod host;
pub use host::on_thread_in;
pub mod plan;
pub mod tap;

pub use plan::{AddrInfo, LinkInfo, NetState, Nic, NicNames, RouteInfo};

/// More NICs than this in one netns is refused (husk-vmm's fds 3.. and IRQ pins).
pub const MAX_NICS: usize = 8;

/// What an operation in the netns failed on: the kernel (netlink) or a device.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Netlink(#[from] husk_netlink::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl HostError {
    fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink(e) => e.errno(),
            Self::Io(e) => e.raw_os_error(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("Cannot open the network namespace {netns}")]
    OpenNetns {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot enter the network namespace {netns}")]
    EnterNetns {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("The network namespace {netns} has no interface besides lo")]
    NoInterface { netns: PathBuf },
    #[error("The network namespace {netns} has {count} interfaces; husk takes at most {MAX_NICS}")]
    TooManyInterfaces { netns: PathBuf, count: usize },
    #[error("Cannot create the tap {tap} in the network namespace {netns}: the name is taken")]
    TapTaken {
        netns: PathBuf,
        tap: String,
        #[source]
        source: io::Error,
    },
    #[error("In the network namespace {netns}: cannot {what}")]
    Host {
        netns: PathBuf,
        what: String,
        #[source]
        source: HostError,
    },
    #[error("Cannot record the pod's network")]
    Persist(#[source] PersistError),
    #[error("Cannot start a thread for the network namespace {netns}")]
    Thread {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The operations the set-up and teardown make in the pod's netns.
pub trait NetHost {
    fn links(&mut self) -> Result<Vec<LinkInfo>, HostError>;
    fn addresses(&mut self) -> Result<Vec<AddrInfo>, HostError>;
    fn routes(&mut self) -> Result<Vec<RouteInfo>, HostError>;
    /// The index of the link named `name`, if there is one.
    fn link_index(&mut self, name: &str) -> Result<Option<u32>, HostError>;
    /// Creates a non-persistent tap (see [`tap::create_tap`]) and returns its fd.
    fn create_tap(&mut self, name: &str) -> Result<OwnedFd, HostError>;
    /// Sets a link's MTU and brings it up.
    fn set_mtu_up(&mut self, index: u32, mtu: u32) -> Result<(), HostError>;
    fn add_ingress(&mut self, index: u32) -> Result<(), HostError>;
    /// A u32 match-all filter on `from`'s ingress redirecting to `to`'s egress.
    fn add_redirect(&mut self, from: u32, to: u32) -> Result<(), HostError>;
    /// Deletes `index`'s ingress qdisc and its filters; false if it had none.
    fn del_ingress(&mut self, index: u32) -> Result<bool, HostError>;
    fn del_link(&mut self, index: u32) -> Result<(), HostError>;
}

/// The pod's network once set up: the taps' fds for husk-vmm (in `nics` order) and
/// the agent's request.
#[derive(Debug)]
pub struct Attached {
    pub state: NetState,
    pub nics: Vec<Nic>,
    pub taps: Vec<OwnedFd>,
    pub request: agent::UpdateNetworkRequest,
}

enum Undo {
    Tap { name: String, index: u32 },
    Ingress { name: String, index: u32 },
}

fn host_err(netns: &Path, what: String) -> impl FnOnce(HostError) -> NetError + '_ {
    move |source| NetError::Host {
        netns: netns.to_owned(),
        what,
        source,
    }
}

/// Lists the netns's links, addresses and routes, chooses the NICs, records the state
/// (`persist`, before anything is created), then for each NIC creates its tap, gives it
/// the veth's MTU, brings it up, and adds the ingress qdiscs and both redirects. On any
/// error, what was created is removed again before the error is returned.
pub fn setup(
    host: &mut dyn NetHost,
    netns: &Path,
    persist: &mut dyn FnMut(&NetState) -> Result<(), NetError>,
) -> Result<Attached, NetError> {
    let links = host
        .links()
        .map_err(host_err(netns, "list the links".into()))?;
    let nics = plan::select_nics(&links);
    if nics.is_empty() {
        return Err(NetError::NoInterface {
            netns: netns.to_owned(),
        });
    }
    if nics.len() > MAX_NICS {
        return Err(NetError::TooManyInterfaces {
            netns: netns.to_owned(),
            count: nics.len(),
        });
    }
    let addrs = host
        .addresses()
        .map_err(host_err(netns, "list the addresses".into()))?;
    let routes = host
        .routes()
        .map_err(host_err(netns, "list the routes".into()))?;
    let request = plan::update_request(&nics, &addrs, &routes);
    let state = NetState {
        netns: netns.to_owned(),
        interfaces: nics
            .iter()
            .map(|n| NicNames {
                veth: n.veth.clone(),
                tap: n.tap.clone(),
            })
            .collect(),
    };
    for nic in &nics {
        if links.iter().any(|l| l.name == nic.tap) {
            return Err(tap_taken(netns, &nic.tap));
        }
    }
    persist(&state)?;

    let mut undo = Vec::new();
    let mut taps = Vec::new();
    match create_all(host, netns, &nics, &mut undo, &mut taps) {
        Ok(()) => {
            info!(
                "netns {}: {}",
                netns.display(),
                nics.iter()
                    .map(|n| format!("{} -> {}", n.veth, n.tap))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(Attached {
                state,
                nics,
                taps,
                request,
            })
        }
        Err(e) => {
            drop(taps);
            for step in undo.into_iter().rev() {
                let (r, what) = match step {
                    Undo::Tap { name, index } => (host.del_link(index), format!("delete {name}")),
                    Undo::Ingress { name, index } => (
                        host.del_ingress(index).map(|_| ()),
                        format!("delete the ingress qdisc of {name}"),
                    ),
                };
                if let Err(u) = r {
                    warn!("netns {}: undo: cannot {what}: {u}", netns.display());
                }
            }
            Err(e)
        }
    }
}

fn tap_taken(netns: &Path, tap: &str) -> NetError {
    NetError::TapTaken {
        netns: netns.to_owned(),
        tap: tap.to_owned(),
        source: io::Error::from_raw_os_error(libc::EEXIST),
    }
}

fn create_all(
    host: &mut dyn NetHost,
    netns: &Path,
    nics: &[Nic],
    undo: &mut Vec<Undo>,
    taps: &mut Vec<OwnedFd>,
) -> Result<(), NetError> {
    for nic in nics {
        // Checked again right before TUNSETIFF, which would attach to an existing tap.
        if host
            .link_index(&nic.tap)
            .map_err(host_err(netns, format!("look up {}", nic.tap)))?
            .is_some()
        {
            return Err(tap_taken(netns, &nic.tap));
        }
        let fd = host.create_tap(&nic.tap).map_err(|source| {
            if source.errno() == Some(libc::EBUSY) || source.errno() == Some(libc::EEXIST) {
                tap_taken(netns, &nic.tap)
            } else {
                host_err(netns, format!("create the tap {}", nic.tap))(source)
            }
        })?;
        taps.push(fd);
        let tap_index = host
            .link_index(&nic.tap)
            .map_err(host_err(netns, format!("look up {}", nic.tap)))?
            .ok_or_else(|| {
                host_err(netns, format!("find the new tap {}", nic.tap))(HostError::Io(
                    io::Error::from_raw_os_error(libc::ENODEV),
                ))
            })?;
        undo.push(Undo::Tap {
            name: nic.tap.clone(),
            index: tap_index,
        });
        host.set_mtu_up(tap_index, nic.mtu).map_err(host_err(
            netns,
            format!("set {} to MTU {} and up", nic.tap, nic.mtu),
        ))?;
        host.add_ingress(tap_index).map_err(host_err(
            netns,
            format!("add an ingress qdisc to {}", nic.tap),
        ))?;
        host.add_ingress(nic.veth_index).map_err(host_err(
            netns,
            format!("add an ingress qdisc to {}", nic.veth),
        ))?;
        undo.push(Undo::Ingress {
            name: nic.veth.clone(),
            index: nic.veth_index,
        });
        host.add_redirect(nic.veth_index, tap_index)
            .map_err(host_err(
                netns,
                format!("redirect {} ingress to {}", nic.veth, nic.tap),
            ))?;
        host.add_redirect(tap_index, nic.veth_index)
            .map_err(host_err(
                netns,
                format!("redirect {} ingress to {}", nic.tap, nic.veth),
            ))?;
    }
    Ok(())
}

/// Removes what [`setup`] made: the veths' ingress qdiscs (their filters go with them)
/// and the taps that still exist (one whose last fd closed, i.e. husk-vmm ended, is
/// gone already). Links that are gone are no error. Every step is tried; the first
/// error is returned.
pub fn teardown(host: &mut dyn NetHost, state: &NetState) -> Result<(), NetError> {
    let netns = state.netns.as_path();
    let mut first = None;
    let mut keep = |r: Result<(), NetError>| {
        if let Err(e) = r {
            warn!("{}", husk_errors::chain(&e));
            first.get_or_insert(e);
        }
    };
    for nic in &state.interfaces {
        keep((|| {
            if let Some(i) = host
                .link_index(&nic.veth)
                .map_err(host_err(netns, format!("look up {}", nic.veth)))?
            {
                host.del_ingress(i).map_err(host_err(
                    netns,
                    format!("delete the ingress qdisc of {}", nic.veth),
                ))?;
            }
            Ok(())
        })());
        keep((|| {
            if let Some(i) = host
                .link_index(&nic.tap)
                .map_err(host_err(netns, format!("look up {}", nic.tap)))?
            {
                host.del_link(i)
                    .map_err(host_err(netns, format!("delete {}", nic.tap)))?;
            }
            Ok(())
        })());
    }
    first.map_or(Ok(()), Err)
}

/// Sets up the pod's network in `netns` (see [`setup`]), recording it in the pod dir
/// `pod_dir` first ([`NetState`]'s file).
pub fn attach(netns: &Path, pod_dir: &Path) -> Result<Attached, NetError> {
    host::in_netns(netns, |h| {
        setup(h, netns, &mut |state| {
            persist::write(pod_dir, state).map_err(NetError::Persist)
        })
    })
}

/// Tears the pod's network down (see [`teardown`]). A netns that is gone (its path
/// removed, or no longer a namespace) has nothing of ours left: that is no error.
pub fn detach(state: &NetState) -> Result<(), NetError> {
    match host::in_netns(&state.netns, |h| teardown(h, state)) {
        Err(NetError::OpenNetns { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            info!(
                "netns {} is gone: nothing to tear down",
                state.netns.display()
            );
            Ok(())
        }
        Err(NetError::EnterNetns { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
            info!(
                "{} is no network namespace any more: nothing to tear down",
                state.netns.display()
            );
            Ok(())
        }
        other => other,
    }
}

/// The network recorded in pod directory `dir`, if there is one (one that cannot be
/// read is logged and ignored: teardown goes on with the rest).
pub fn read_state(dir: &Path) -> Option<NetState> {
    persist::read::<NetState>(dir).unwrap_or_else(|e| {
        warn!("ignoring the recorded network: {}", husk_errors::chain(&e));
        None
    })
}

#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
mod tests;
