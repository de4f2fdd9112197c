//! husk-netlink: a small synchronous rtnetlink client, for the agent (the
//! guest's links) and the shim (the pod's network namespace on the host).
//! No async runtime: one [`Socket`] sends one request at a time and reads
//! its answer. Messages come from the `netlink-packet-route` crate, which is
//! re-exported for requests the modules here do not model (tc).
//!
//! - [`socket`]: [`Socket::new`] opens `NETLINK_ROUTE` in the calling
//!   thread's network namespace; [`Socket::request`] sends any
//!   [`RouteNetlinkMessage`] with `NLM_F_REQUEST | NLM_F_ACK` plus the
//!   caller's flags (`NLM_F_CREATE | NLM_F_EXCL`, ...) and waits for the ACK;
//!   [`Socket::dump`] collects a multi-part answer. A refusal is
//!   [`Error::Netlink`], which keeps the errno ([`Error::errno`]) and the
//!   kernel's extended-ACK text.
//! - [`link`]: [`link::list`] gives [`Link`]s (index, name, MAC, MTU, kind,
//!   flags, operational state); `by_name`, `by_index`, `by_mac`; `set_up`,
//!   `set_down`, `set_name`, `set_mtu`, `set_mac`, `delete`, `add_dummy`,
//!   `add_veth`. [`MacAddr`] parses "aa:bb:cc:dd:ee:ff".
//! - [`address`]: [`address::list`] / `list_link` give [`Address`]es (link,
//!   [`IpNet`], scope, flags); `add` (with [`AddressFlags::Nodad`] for IPv6
//!   addresses usable at once), `delete`, `flush`.
//! - [`route`]: [`route::list`] gives the main table's [`Route`]s
//!   (destination, gateway, device, source, metric, scope, protocol);
//!   `add` a [`NewRoute`], `delete` a listed one.
//! - [`ip`]: [`IpNet`] ("10.88.0.5/16") and [`Family`].
//! - [`netns`]: [`netns::run_in_new`] runs a closure in a fresh network
//!   namespace (tests).
//!
//! ```no_run
//! # fn main() -> Result<(), husk_netlink::Error> {
//! use husk_netlink::{address, link, route, AddressFlags, NewRoute, Socket};
//! let mut nl = Socket::new()?;
//! let eth = link::by_mac(&mut nl, "02:00:00:00:00:01".parse().unwrap())?.remove(0);
//! link::set_down(&mut nl, eth.index)?;
//! link::set_name(&mut nl, eth.index, "eth0")?;
//! address::add(&mut nl, eth.index, "10.88.0.5/16".parse().unwrap(), AddressFlags::empty())?;
//! link::set_up(&mut nl, eth.index)?;
//! let default = NewRoute::via("0.0.0.0/0".parse().unwrap(), "10.88.0.1".parse().unwrap(), eth.index);
//! route::add(&mut nl, &default)?;
//! # Ok(()) }
//! ```

pub mod address;
pub mod ip;
pub mod link;
pub mod netns;
pub mod route;
pub mod socket;
pub mod tc;

pub use netlink_packet_core;
pub use netlink_packet_route;
pub use netlink_packet_route::RouteNetlinkMessage;

pub use crate::address::{Address, AddressFlags};
pub use crate::ip::{Family, IpNet, ParseError};
pub use crate::link::{Link, MacAddr, OperState};
pub use crate::route::{NewRoute, Route, Scope};
pub use crate::socket::{Error, Result, Socket};
