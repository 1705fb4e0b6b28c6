//! `sk_msg` on `LOCAL_SOCKETS`: a message sent on one end of a same-netns pair goes straight to
//! the other end's receive queue, skipping the TCP/IP stack (both ends were added by
//! `sockets`). Without a peer in the map the message takes the normal path.
//!
//! Each sending end splices at most `SPLICE_BUDGET_BYTES` (tracked in `SPLICE_BUDGET` under its
//! own key): the spliced queue has no receive window, so this is what bounds the memory a slow
//! reader can pin. The first message that takes the normal path (budget spent, or no peer in the
//! map) ends splicing for that direction for good, so spliced bytes always precede TCP bytes and
//! the peer, which drains its spliced queue first, reads them in order.
use aya_ebpf::{
    bindings::{BPF_F_INGRESS, sk_action::SK_PASS},
    helpers::bpf_get_netns_cookie,
    macros::sk_msg,
    programs::SkMsgContext,
};
use weft_ebpf_common::{SPLICE_BUDGET_BYTES, SPLICE_STOPPED, SocketPairKey, stats};

use crate::state::{
    AF_INET, LOCAL_SOCKETS, SPLICE_BUDGET, address_of, bump, read_ip6, remote_port_from_context,
};

#[sk_msg]
pub fn splice_local(ctx: SkMsgContext) -> u32 {
    try_splice_local(&ctx);
    // A redirect decided above is carried out on SK_PASS; without one, SK_PASS is the normal path.
    SK_PASS
}

fn try_splice_local(ctx: &SkMsgContext) {
    let msg = ctx.msg;
    // SAFETY: `msg` points at the kernel's `sk_msg_md` for the whole program run.
    let (family, local_port, raw_remote_port, size) =
        unsafe { ((*msg).family, (*msg).local_port, (*msg).remote_port, (*msg).size) };
    // SAFETY: as above; the IPv4 fields are read for IPv4 sockets, the IPv6 ones otherwise.
    let (local, remote) = unsafe {
        if family == AF_INET {
            (
                address_of(family, (*msg).local_ip4, [0; 4]),
                address_of(family, (*msg).remote_ip4, [0; 4]),
            )
        } else {
            (
                address_of(family, 0, read_ip6(&raw const (*msg).local_ip6)),
                address_of(family, 0, read_ip6(&raw const (*msg).remote_ip6)),
            )
        }
    };
    // SAFETY: the helper only reads the socket behind the context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(msg.cast()) };
    let local_port = local_port as u16;
    let remote_port = remote_port_from_context(raw_remote_port);
    let own = SocketPairKey {
        netns_cookie,
        local_address: local,
        remote_address: remote,
        local_port,
        remote_port,
        _pad: [0; 4],
    };
    // SAFETY: pointer from a map lookup, valid for this run; sends on one socket are serialised
    // by its lock, and only sends on this socket touch this entry.
    let spliced = SPLICE_BUDGET.get_ptr(&own).map_or(0, |bytes| unsafe { *bytes });
    if spliced == SPLICE_STOPPED {
        return;
    }
    let after = spliced + u64::from(size);
    if after > SPLICE_BUDGET_BYTES {
        stop(&own);
        bump(stats::SPLICE_BUDGET_SPENT);
        return;
    }
    // The peer's key: its local end is our remote end.
    let mut peer = SocketPairKey {
        netns_cookie,
        local_address: remote,
        remote_address: local,
        local_port: remote_port,
        remote_port: local_port,
        _pad: [0; 4],
    };
    if LOCAL_SOCKETS.redirect_msg(ctx, &mut peer, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS) {
        if SPLICE_BUDGET.insert(&own, &after, 0).is_err() {
            // Without a record the budget could not be kept: splice nothing more. The entry is
            // missing only if the map is full of live pairs; this message is already spliced.
            stop(&own);
        }
        bump(stats::SPLICED_MESSAGES);
    } else {
        // No peer: this message goes by TCP, so later ones must too.
        stop(&own);
    }
}

fn stop(own: &SocketPairKey) {
    let _ = SPLICE_BUDGET.insert(own, &SPLICE_STOPPED, 0);
}
