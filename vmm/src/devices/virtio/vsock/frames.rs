//! Frame boundaries on a guest UDP server's companion stream, where `Datagram` frames flow both
//! ways and the host side may end (host-server restarting) in the middle of one.
//!
//! A listener's companion carries one frame each way and then nothing; a UDP server's carries
//! a frame per datagram, so keeping it across host-server restarts means never leaving the
//! guest's stream mid-frame in either direction:
//!
//! - guest → host, [`FrameCursor`] walks the guest's bytes as they arrive (headers only, a
//!   few comparisons per packet): when the host side ends, every buffered guest byte is
//!   dropped and the cursor says where the guest's stream stands, so that once host-server has
//!   the association again relaying resumes at the next frame boundary (the rest of a frame the
//!   guest was in the middle of is dropped too).
//! - host → guest, [`HostFrames`] stages what is read from host-server and gives the guest only
//!   whole frames: a frame host-server had only partly written when it died never reaches the
//!   guest at all, and one the guest has started to receive is already whole here, so it is
//!   always finished. The cost is one copy of each datagram, on UDP companions only; every
//!   other stream is relayed as before.
//!
//! Both are plain data over byte slices, tested here; the connection owns them.

use shared_proto::frame::{frame_len, ProtoError, HEADER_LEN};

/// Where a stream of frames stands: inside a header, inside a body, or at a boundary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FrameCursor {
    head: [u8; HEADER_LEN],
    /// Header bytes seen of the current frame.
    have: usize,
    /// Body bytes still to come of the current frame, once its header is in.
    left: usize,
}

impl FrameCursor {
    /// Whether the next byte starts a frame.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Walks `bytes` to their end.
    ///
    /// # Errors
    /// A header that is not a frame's: the stream is not frames.
    pub fn advance(&mut self, mut bytes: &[u8]) -> Result<(), ProtoError> {
        while !bytes.is_empty() {
            let n = self.step(bytes)?;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Walks `bytes` up to the next frame boundary (or their end); returns how many it took
    /// (none when already at a boundary).
    ///
    /// # Errors
    /// As [`Self::advance`].
    pub fn to_boundary(&mut self, bytes: &[u8]) -> Result<usize, ProtoError> {
        let mut taken = 0;
        while taken < bytes.len() && !self.at_boundary() {
            taken += self.step(&bytes[taken..])?;
        }
        Ok(taken)
    }

    /// Takes the current part (header or body) of a frame from `bytes`; at least one byte.
    fn step(&mut self, bytes: &[u8]) -> Result<usize, ProtoError> {
        if self.left > 0 {
            let n = self.left.min(bytes.len());
            self.left -= n;
            return Ok(n);
        }
        let n = (HEADER_LEN - self.have).min(bytes.len());
        self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
        self.have += n;
        if self.have == HEADER_LEN {
            let total = frame_len(&self.head)?.unwrap_or(HEADER_LEN);
            self.left = total - HEADER_LEN;
            self.have = 0;
        } else {
            // A bad magic or version shows before the header is whole.
            frame_len(&self.head[..self.have])?;
        }
        Ok(n)
    }
}

/// The most read from host-server in one go while no whole frame is staged.
const READ_CHUNK: usize = 64 * 1024;
/// The most staged when host-server's end hangs up with bytes unread (a Unix stream's queue
/// holds far less).
const MAX_DRAINED: usize = 1024 * 1024;

/// Bytes read from host-server for the guest, given to it by whole frames only (see the module
/// docs). At most a frame's maximum plus [`READ_CHUNK`] bytes are held while it lives, and
/// [`MAX_DRAINED`] plus that once it hung up.
#[derive(Debug, Default)]
pub struct HostFrames {
    buf: Vec<u8>,
    /// `buf[..whole]` are whole frames (the first perhaps partly given to the guest already).
    whole: usize,
}

impl HostFrames {
    /// Bytes the guest may be given now.
    pub fn ready(&self) -> usize {
        self.whole
    }

    /// Room for one read from host-server: none while a whole frame waits for the guest.
    pub fn room(&self) -> usize {
        if self.whole > 0 {
            0
        } else {
            READ_CHUNK
        }
    }

    /// Appends what one read of at most [`Self::room`] bytes brought, through `read` (given the
    /// room to fill, returning how much it filled).
    ///
    /// # Errors
    /// The read's error; `InvalidData` when host-server's bytes are not frames.
    pub fn fill(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        self.fill_with(self.room(), read)
    }

    /// host-server went away (its end hung up): what it wrote before is read to the end (at
    /// most [`MAX_DRAINED`] bytes staged), through `read` as in [`Self::fill`], so that its
    /// whole frames still reach the guest; then [`Self::cut`] drops an unfinished one.
    pub fn drain(&mut self, mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>) {
        while self.buf.len() < MAX_DRAINED {
            match self.fill_with(READ_CHUNK, &mut read) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        self.cut();
    }

    fn fill_with(
        &mut self,
        room: usize,
        read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        let have = self.buf.len();
        self.buf.resize(have + room, 0);
        let got = read(&mut self.buf[have..]);
        self.buf.truncate(have + got.as_ref().map_or(0, |&n| n));
        let n = got?;
        loop {
            match frame_len(&self.buf[self.whole..]) {
                Ok(Some(total)) if self.buf.len() - self.whole >= total => self.whole += total,
                Ok(_) => return Ok(n),
                Err(_) => return Err(std::io::ErrorKind::InvalidData.into()),
            }
        }
    }

    /// The first `n` ready bytes, to give to the guest; [`Self::consume`] them once given.
    pub fn peek(&self, n: usize) -> &[u8] {
        &self.buf[..n.min(self.whole)]
    }

    /// The first `n` ready bytes went to the guest.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.whole);
        self.buf.drain(..n);
        self.whole -= n;
    }

    /// host-server went away: a frame it had not finished is dropped (the guest saw none of
    /// it); whole frames stay for the guest.
    pub fn cut(&mut self) {
        self.buf.truncate(self.whole);
    }

    /// Queues a frame of the VMM's own for the guest, after the whole frames (call after
    /// [`Self::cut`], at a boundary).
    pub fn push_frame(&mut self, frame: &[u8]) {
        self.buf.truncate(self.whole);
        self.buf.extend_from_slice(frame);
        self.whole = self.buf.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::outsource::Datagram;
    use shared_proto::ToGuest;

    fn datagram(payload: &[u8]) -> Vec<u8> {
        shared_proto::to_vec(&ToGuest::Datagram(Datagram {
            addr: "192.0.2.1:53".parse().expect("addr"),
            payload: payload.to_vec(),
        }))
        .expect("frame")
    }

    #[test]
    fn the_cursor_finds_every_boundary_in_any_split() {
        let mut all = datagram(b"one");
        all.extend(datagram(&[7; 300]));
        all.extend(datagram(b""));
        let ends = [
            datagram(b"one").len(),
            all.len() - datagram(b"").len(),
            all.len(),
        ];
        for cut in 1..all.len() {
            let mut c = FrameCursor::default();
            c.advance(&all[..cut]).expect("frames");
            assert_eq!(c.at_boundary(), ends.contains(&cut), "cut at {cut}");
            c.advance(&all[cut..]).expect("frames");
            assert!(c.at_boundary());
        }
        // to_boundary stops at the end of the frame it is in.
        let mut c = FrameCursor::default();
        c.advance(&all[..5]).expect("frames");
        assert_eq!(c.to_boundary(&all[5..]).expect("frames"), ends[0] - 5);
        assert!(c.at_boundary());
        assert_eq!(c.to_boundary(&all[ends[0]..]).expect("frames"), 0);
        assert!(FrameCursor::default().advance(b"not a frame").is_err());
    }

    #[test]
    fn host_frames_give_only_whole_frames_and_drop_an_unfinished_one() {
        let (a, b) = (datagram(b"first"), datagram(&[9; 100]));
        let mut f = HostFrames::default();
        let mut incoming = a.clone();
        incoming.extend_from_slice(&b[..20]);
        let fill = |f: &mut HostFrames, bytes: &[u8]| {
            f.fill(|room| {
                room[..bytes.len()].copy_from_slice(bytes);
                Ok(bytes.len())
            })
        };
        assert_eq!(fill(&mut f, &incoming).expect("fill"), incoming.len());
        assert_eq!(f.ready(), a.len());
        assert_eq!(f.room(), 0, "nothing more is read while a frame waits");
        // Half of the first frame goes to the guest; host-server dies.
        f.consume(3);
        f.cut();
        assert_eq!(f.peek(usize::MAX), &a[3..], "the started frame is finished");
        f.consume(usize::MAX);
        assert_eq!(f.ready(), 0);
        // What comes after is at a boundary again.
        fill(&mut f, &b).expect("fill");
        assert_eq!(f.peek(usize::MAX), &b[..]);
        let failed =
            shared_proto::to_vec(&ToGuest::Failed(shared_proto::Errno::ENETDOWN)).expect("frame");
        f.push_frame(&failed);
        let mut want = b.clone();
        want.extend(&failed);
        assert_eq!(f.peek(usize::MAX), &want[..]);
        let mut bad = HostFrames::default();
        assert!(fill(&mut bad, b"garbage!").is_err());
    }
}
