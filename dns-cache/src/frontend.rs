//! [`Frontend`]: raw DNS packets in, replies out, with the reply cache ([`crate::replies`]) in
//! front of [`crate::answer::answer_packet`]. The UDP listeners ([`crate::udp`]) and the guest
//! packets that host-server relays over dns.sock ([`crate::lookup`]) go through it.

use std::sync::Arc;

use hickory_proto::op::ResponseCode;

use crate::answer::answer_packet_reuse;
use crate::packet::QueryView;
use crate::replies::{Key, ReplyCache};
use crate::resolve::Resolver;

/// Raw DNS packets in, replies out: the reply cache in front of
/// [`answer_packet`](crate::answer::answer_packet).
#[derive(Debug)]
pub struct Frontend {
    resolver: Arc<Resolver>,
    replies: ReplyCache,
    payload: u16,
}

impl Frontend {
    /// A front end advertising `payload` as its EDNS UDP size, keeping at most `replies`
    /// encoded replies.
    pub fn new(resolver: Arc<Resolver>, payload: u16, replies: usize) -> Self {
        Self {
            resolver,
            replies: ReplyCache::new(replies),
            payload,
        }
    }

    /// The resolver behind it.
    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// The EDNS UDP size it advertises.
    pub fn payload(&self) -> u16 {
        self.payload
    }

    /// Writes the reply to `packet` into `out` if the reply cache holds one (the hot path: no
    /// await, no allocation once `out` has grown); `false` means "take [`Frontend::answer`]".
    pub fn replay(&self, packet: &[u8], tcp: bool, out: &mut Vec<u8>) -> bool {
        let Some(q) = QueryView::parse(packet) else {
            return false;
        };
        let key = Key::of(&q, tcp, self.payload);
        let now = self.resolver.mappings().now();
        let Some(reuse) = self.replies.replay(&q, &key, now, out) else {
            return false;
        };
        let rcode = ResponseCode::from_low(out.get(3).map_or(0, |b| b & 0x0f));
        self.resolver
            .metrics()
            .replayed(q.qtype.into(), rcode, &reuse);
        true
    }

    /// Answers `packet` in full (see [`answer_packet`](crate::answer::answer_packet)) and keeps a
    /// replayable reply.
    pub async fn answer(&self, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let (reply, reuse) = answer_packet_reuse(&self.resolver, packet, tcp, self.payload).await?;
        if let (Some(reuse), Some(q)) = (reuse, QueryView::parse(packet)) {
            let key = Key::of(&q, tcp, self.payload);
            let now = self.resolver.mappings().now();
            self.replies.insert(&q, &key, &reply, reuse, now);
        }
        Some(reply)
    }

    /// Empties the answer cache and the reply cache; returns how many answers the former held.
    pub fn clear_caches(&self) -> usize {
        self.replies.clear();
        self.resolver.clear_cache()
    }
}
