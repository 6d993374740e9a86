//! Process-mode listeners and UDP server associations known by their packet channel, for
//! requesters that make the channel themselves (`ListenRequest::channel`,
//! `UdpRequest::channel`): the host's end arrives attached to the request, and its identity
//! (`st_dev`, `st_ino` of the socket) names the listener or association. A request whose
//! channel is already a live one's, of the same use, is a *re-registration* (a requester that
//! lost sight of host-server, or hands the channel on to its keeper): it is answered again
//! (`Listening`, `Associated`) with the live one's address, nothing new is opened, and its
//! stream is held until the live one ends or the requester closes it.
//!
//! Invariant: **one live listener or association per channel** — the map is checked and the
//! new one entered under one lock, with the bind in between (a plain system call), so two
//! requests bringing the same channel at once never open two.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::UnixStream;
use tokio::sync::watch;

/// A channel's identity: its socket's device and inode.
pub(crate) type Key = (u64, u64);

/// What a channel serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    Listener,
    Udp,
}

/// A live listener or association as a re-registration sees it.
#[derive(Debug)]
struct Live {
    what: Use,
    local: SocketAddrV4,
    generation: u64,
    /// Changes (its sender dropped) when the listener ends.
    ended: watch::Receiver<()>,
}

#[derive(Debug, Default)]
struct Map {
    live: HashMap<Key, Live>,
    next_generation: u64,
}

/// The live process-mode listeners and associations whose requester made the channel, by
/// channel.
#[derive(Debug, Default, Clone)]
pub(crate) struct Channels(Arc<Mutex<Map>>);

/// What a request's channel names.
#[derive(Debug)]
pub(crate) enum Found {
    /// A live one of the use asked: answer it again. Whoever brings the channel holds it (its
    /// owner passed it on: the keeper may run as another user, root, than the program), so the
    /// identity is not compared.
    Live {
        local: SocketAddrV4,
        ended: watch::Receiver<()>,
    },
    /// A live one of another use (a listener's channel brought to a UDP request): refused.
    Other,
    /// None: open one.
    None,
}

/// The listener's entry, removed when this drops (the listener actor holds it).
#[derive(Debug)]
pub(crate) struct Registration {
    map: Channels,
    key: Key,
    generation: u64,
    _alive: watch::Sender<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.map.lock();
        if map
            .live
            .get(&self.key)
            .is_some_and(|l| l.generation == self.generation)
        {
            map.live.remove(&self.key);
        }
    }
}

/// The map, locked; see [`Channels::locked`].
pub(crate) struct Locked<'a> {
    owner: &'a Channels,
    map: MutexGuard<'a, Map>,
}

impl Locked<'_> {
    /// What `key` names, for a request of use `what`.
    pub(crate) fn find(&self, key: Key, what: Use) -> Found {
        match self.map.live.get(&key) {
            Some(l) if l.what == what => Found::Live {
                local: l.local,
                ended: l.ended.clone(),
            },
            Some(_) => Found::Other,
            None => Found::None,
        }
    }

    /// Enters a new listener or association (`what`) for `key`.
    pub(crate) fn register(&mut self, key: Key, what: Use, local: SocketAddrV4) -> Registration {
        let (alive, ended) = watch::channel(());
        self.map.next_generation += 1;
        let generation = self.map.next_generation;
        self.map.live.insert(
            key,
            Live {
                what,
                local,
                generation,
                ended,
            },
        );
        Registration {
            map: self.owner.clone(),
            key,
            generation,
            _alive: alive,
        }
    }
}

impl Channels {
    fn lock(&self) -> MutexGuard<'_, Map> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The map locked for one look-up and, if none, one registration (see the module docs).
    pub(crate) fn locked(&self) -> Locked<'_> {
        Locked {
            owner: self,
            map: self.lock(),
        }
    }

    /// How many listeners are entered (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().live.len()
    }
}

/// The identity of `fd` when it is an `AF_UNIX` `SOCK_SEQPACKET` socket (a packet channel's
/// end); `None` for anything else.
pub(crate) fn channel_key(fd: BorrowedFd<'_>) -> Option<Key> {
    let sock = socket2::SockRef::from(&fd);
    if sock.domain().ok()? != socket2::Domain::UNIX
        || sock.r#type().ok()? != socket2::Type::SEQPACKET
    {
        return None;
    }
    // fstat through a duplicate held as a file (closed again at once).
    let st = std::fs::File::from(fd.try_clone_to_owned().ok()?)
        .metadata()
        .ok()?;
    Some((st.dev(), st.ino()))
}

/// Serves a re-registration (its socket slot already given back): answers `answer` on its
/// `stream` and holds the stream (see [`hold`]).
pub(crate) async fn answer_again(
    mut stream: UnixStream,
    answer: &shared_proto::ToGuest,
    ended: watch::Receiver<()>,
) {
    if crate::framed::write_frame(&mut stream, answer)
        .await
        .is_ok()
    {
        tracing::debug!(?answer, "a channel registered again");
        hold(stream, ended).await;
    }
}

/// Holds a re-registration's stream until the listener or association ends (`ended` changes or its sender
/// goes) or the requester closes the stream (or sends anything: nothing may follow).
pub(crate) async fn hold(stream: UnixStream, mut ended: watch::Receiver<()>) {
    let mut probe = [0u8; 1];
    tokio::select! {
        _ = ended.changed() => {}
        _ = async {
            loop {
                if stream.readable().await.is_err() {
                    return;
                }
                match stream.try_read(&mut probe) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    _ => return,
                }
            }
        } => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::fd::AsFd;

    use socket2::{Domain, Socket, Type};

    use super::*;

    #[test]
    fn only_a_packet_channel_has_a_key_and_each_has_its_own() {
        let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        let ka = channel_key(a.as_fd()).unwrap();
        let kb = channel_key(b.as_fd()).unwrap();
        assert_ne!(ka, kb);
        let dup = b.try_clone().unwrap();
        assert_eq!(channel_key(dup.as_fd()), Some(kb));
        let (s, _t) = Socket::pair(Domain::UNIX, Type::STREAM, None).unwrap();
        assert_eq!(channel_key(s.as_fd()), None);
        let udp = Socket::new(Domain::IPV6, Type::DGRAM, None).unwrap();
        assert_eq!(channel_key(udp.as_fd()), None);
    }

    #[test]
    fn a_channel_names_its_listener_until_it_ends() {
        let ch = Channels::default();
        let key = (1, 2);
        let local: SocketAddrV4 = "0.0.0.0:8080".parse().unwrap();
        assert!(matches!(ch.locked().find(key, Use::Listener), Found::None));
        let reg = ch.locked().register(key, Use::Listener, local);
        let Found::Live { local: l, ended } = ch.locked().find(key, Use::Listener) else {
            panic!("not found");
        };
        assert_eq!(l, local);
        assert_eq!(ch.len(), 1);
        // A listener's channel brought to a UDP request names nothing to answer.
        assert!(matches!(ch.locked().find(key, Use::Udp), Found::Other));
        drop(reg);
        assert_eq!(ch.len(), 0);
        // The re-registration's holder learns that the listener ended.
        assert!(ended.has_changed().is_err());
        // A newer registration of the same channel is not removed by an older one's end.
        let old = ch.locked().register(key, Use::Udp, local);
        let new = ch.locked().register(key, Use::Udp, local);
        drop(old);
        assert_eq!(ch.len(), 1);
        drop(new);
        assert_eq!(ch.len(), 0);
    }
}
