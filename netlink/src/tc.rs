//! Traffic control over rtnetlink: the `ingress` qdisc and a u32 match-all filter with a
//! `mirred egress redirect` action, the pair that joins a tap to a veth (Kata's
//! tc-filter model). Equivalent to
//!
//! ```text
//! tc qdisc add dev FROM ingress
//! tc filter add dev FROM parent ffff: protocol all u32 match u32 0 0 \
//!     action mirred egress redirect dev TO
//! ```
//!
//! The messages are built and read by pure functions, unit-tested without a kernel.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirror, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcHeader, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::socket::{Result, Socket};

/// The ingress qdisc's handle, `ffff:`; its filters have it as parent.
pub const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// `ETH_P_ALL`: a filter for every protocol.
pub const ETH_P_ALL: u16 = 0x0003;
/// The ingress qdisc's kind.
pub const INGRESS_KIND: &str = "ingress";

/// A qdisc as a dump lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    pub ifindex: u32,
    pub kind: String,
    pub handle: TcHandle,
    pub parent: TcHandle,
}

/// A filter as a dump lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub ifindex: u32,
    pub kind: String,
    pub parent: TcHandle,
    pub handle: u32,
    pub priority: u16,
    /// The protocol (host order: `ETH_P_ALL` is 3).
    pub protocol: u16,
    /// The target of a `mirred egress redirect` action, if the filter has one.
    pub redirect_to: Option<u32>,
}

fn ifindex_i32(ifindex: u32) -> i32 {
    i32::try_from(ifindex).unwrap_or(i32::MAX)
}

/// The RTM_NEWQDISC message of the ingress qdisc on `ifindex` (the kernel gives it the
/// handle `ffff:`).
pub fn ingress_qdisc_message(ifindex: u32) -> TcMessage {
    let mut m = del_ingress_qdisc_message(ifindex);
    m.attributes
        .push(TcAttribute::Kind(INGRESS_KIND.to_owned()));
    m
}

/// The RTM_DELQDISC message of the ingress qdisc on `ifindex`: no handle and no kind, so
/// that a link without one (or whose ingress queue holds the placeholder left by an
/// earlier delete) answers ENOENT, not EINVAL ("must match existing qdisc").
pub fn del_ingress_qdisc_message(ifindex: u32) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex_i32(ifindex));
    m.header.parent = TcHandle::INGRESS;
    m
}

/// The RTM_NEWTFILTER message of a u32 match-all filter on the ingress of `from` that
/// redirects every frame to the egress of `to` (the frame is then stolen: it goes no
/// further on `from`). Priority 0: the kernel picks one.
pub fn redirect_filter_message(from: u32, to: u32) -> TcMessage {
    let mut key = TcU32Key::default();
    key.mask = 0;
    key.val = 0;
    key.off = 0;
    key.offmask = 0;
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![key];

    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_owned()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];

    let header = TcHeader {
        index: ifindex_i32(from),
        parent: INGRESS_HANDLE,
        info: u32::from(ETH_P_ALL.to_be()),
        ..TcHeader::default()
    };
    TcMessage::from_parts(
        header,
        vec![
            TcAttribute::Kind(TcFilterU32::KIND.to_owned()),
            TcAttribute::Options(vec![
                TcOption::U32(TcFilterU32Option::Selector(sel)),
                TcOption::U32(TcFilterU32Option::Action(vec![action])),
            ]),
        ],
    )
}

fn kind_of(attrs: &[TcAttribute]) -> String {
    attrs
        .iter()
        .find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// A dumped qdisc.
pub fn qdisc_from_message(m: &TcMessage) -> Qdisc {
    Qdisc {
        ifindex: u32::try_from(m.header.index).unwrap_or(0),
        kind: kind_of(&m.attributes),
        handle: m.header.handle,
        parent: m.header.parent,
    }
}

fn mirred_redirect(action: &TcAction) -> Option<u32> {
    let is_mirred = action
        .attributes
        .iter()
        .any(|a| matches!(a, TcActionAttribute::Kind(k) if k == TcActionMirror::KIND));
    if !is_mirred {
        return None;
    }
    action.attributes.iter().find_map(|a| match a {
        TcActionAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcActionOption::Mirror(TcActionMirrorOption::Parms(p))
                if p.eaction == TcMirrorActionType::EgressRedir =>
            {
                Some(p.ifindex)
            }
            _ => None,
        }),
        _ => None,
    })
}

/// A dumped filter.
pub fn filter_from_message(m: &TcMessage) -> Filter {
    let redirect_to = m.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::U32(TcFilterU32Option::Action(actions)) => {
                actions.iter().find_map(mirred_redirect)
            }
            _ => None,
        }),
        _ => None,
    });
    Filter {
        ifindex: u32::try_from(m.header.index).unwrap_or(0),
        kind: kind_of(&m.attributes),
        parent: m.header.parent,
        handle: u32::from(m.header.handle),
        priority: (m.header.info >> 16) as u16,
        protocol: u16::from_be((m.header.info & 0xffff) as u16),
        redirect_to,
    }
}

/// Adds the ingress qdisc to `ifindex` (EEXIST if it has one).
pub fn add_ingress_qdisc(sock: &mut Socket, ifindex: u32) -> Result<()> {
    sock.request(
        "add ingress qdisc",
        RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc_message(ifindex)),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Deletes the ingress qdisc of `ifindex`, and with it every filter under it. False if
/// it had none.
pub fn del_ingress_qdisc(sock: &mut Socket, ifindex: u32) -> Result<bool> {
    match sock.request(
        "delete ingress qdisc",
        RouteNetlinkMessage::DelQueueDiscipline(del_ingress_qdisc_message(ifindex)),
        0,
    ) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Adds a match-all filter on the ingress of `from` that redirects to `to`. `from` must
/// have the ingress qdisc.
pub fn add_redirect_filter(sock: &mut Socket, from: u32, to: u32) -> Result<()> {
    sock.request(
        "add redirect filter",
        RouteNetlinkMessage::NewTrafficFilter(redirect_filter_message(from, to)),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// The qdiscs of `ifindex` (the kernel dumps every link's; the others are dropped).
pub fn qdiscs(sock: &mut Socket, ifindex: u32) -> Result<Vec<Qdisc>> {
    let msgs = sock.dump(
        "list qdiscs",
        RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
    )?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(q) => Some(qdisc_from_message(q)),
            _ => None,
        })
        .filter(|q| q.ifindex == ifindex)
        .collect())
}

/// The filters under the ingress qdisc of `ifindex` (u32 also lists its hash table
/// node, with no action).
pub fn ingress_filters(sock: &mut Socket, ifindex: u32) -> Result<Vec<Filter>> {
    let mut req = TcMessage::with_index(ifindex_i32(ifindex));
    req.header.parent = INGRESS_HANDLE;
    let msgs = sock.dump("list filters", RouteNetlinkMessage::GetTrafficFilter(req))?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f) => Some(filter_from_message(f)),
            _ => None,
        })
        .filter(|f| f.ifindex == ifindex)
        .collect())
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};

    use super::*;

    fn round_trip(m: &TcMessage) -> (Vec<u8>, TcMessage) {
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        let back = TcMessage::parse(&buf[..]).expect("parses");
        (buf, back)
    }

    #[test]
    fn the_ingress_qdisc_message_has_the_ingress_parent_and_kind() {
        let (buf, back) = round_trip(&ingress_qdisc_message(7));
        // struct tcmsg: family, pad, pad, ifindex, handle, parent, info
        assert_eq!(&buf[4..8], &7i32.to_ne_bytes());
        assert_eq!(
            &buf[8..12],
            &0u32.to_ne_bytes(),
            "handle left to the kernel"
        );
        assert_eq!(&buf[12..16], &0xffff_fff1u32.to_ne_bytes(), "TC_H_INGRESS");
        let q = qdisc_from_message(&back);
        assert_eq!(q.ifindex, 7);
        assert_eq!(q.kind, "ingress");
        assert_eq!(q.parent, TcHandle::INGRESS);
        let (_, del) = round_trip(&del_ingress_qdisc_message(7));
        assert_eq!(del.header.parent, TcHandle::INGRESS);
        assert!(
            del.attributes.is_empty(),
            "a kind would make a missing qdisc EINVAL"
        );
    }

    #[test]
    fn the_redirect_filter_matches_everything_and_redirects_to_the_target() {
        let (buf, back) = round_trip(&redirect_filter_message(3, 9));
        assert_eq!(&buf[4..8], &3i32.to_ne_bytes());
        assert_eq!(&buf[12..16], &0xffff_0000u32.to_ne_bytes(), "parent ffff:");
        // tcm_info: priority 0 (the kernel's choice), protocol ETH_P_ALL in network order.
        assert_eq!(&buf[16..20], &u32::from(0x0003u16.to_be()).to_ne_bytes());
        let f = filter_from_message(&back);
        assert_eq!(f.ifindex, 3);
        assert_eq!(f.kind, "u32");
        assert_eq!(f.parent, INGRESS_HANDLE);
        assert_eq!(f.protocol, ETH_P_ALL);
        assert_eq!(f.priority, 0);
        assert_eq!(f.redirect_to, Some(9));

        let opts = back
            .attributes
            .iter()
            .find_map(|a| match a {
                TcAttribute::Options(o) => Some(o.clone()),
                _ => None,
            })
            .expect("options");
        let sel = opts
            .iter()
            .find_map(|o| match o {
                TcOption::U32(TcFilterU32Option::Selector(s)) => Some(s.clone()),
                _ => None,
            })
            .expect("selector");
        assert!(sel.flags.contains(TcU32SelectorFlags::Terminal));
        assert_eq!(sel.nkeys, 1);
        assert_eq!((sel.keys[0].mask, sel.keys[0].val), (0, 0), "match-all key");
        let action = opts
            .iter()
            .find_map(|o| match o {
                TcOption::U32(TcFilterU32Option::Action(a)) => a.first().cloned(),
                _ => None,
            })
            .expect("action");
        let parms = action
            .attributes
            .iter()
            .find_map(|a| match a {
                TcActionAttribute::Options(o) => o.iter().find_map(|o| match o {
                    TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) => Some(p.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .expect("mirred parameters");
        assert_eq!(parms.generic.action, TcActionType::Stolen);
        assert_eq!(parms.eaction, TcMirrorActionType::EgressRedir);
    }

    #[test]
    fn a_filter_without_a_mirred_action_redirects_nowhere() {
        let mut m = TcMessage::with_index(3);
        m.header.parent = INGRESS_HANDLE;
        m.header.info = (0xc000 << 16) | u32::from(ETH_P_ALL.to_be());
        m.attributes
            .push(TcAttribute::Kind(TcFilterU32::KIND.to_owned()));
        let f = filter_from_message(&m);
        assert_eq!(f.priority, 0xc000);
        assert_eq!(f.protocol, ETH_P_ALL);
        assert_eq!(f.redirect_to, None);
    }
}
