//! io_uring `user_data`: which op completed, for which slot, of which generation.
//!
//! Layout: bits 56..64 op kind, 32..56 slot generation (24 bits), 0..32 slot index (for
//! listener ops: the listener index). The generation catches a CQE that outlived its
//! slot, which the in-flight accounting says cannot happen; a mismatch is dropped.

/// The kind of operation an SQE was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Multishot accept on a listener.
    Accept,
    /// Cancel of a listener's accept (drain).
    AcceptCancel,
    /// Read of the worker's wake eventfd.
    Wake,
    /// Cancel of the wake read (exit).
    WakeCancel,
    /// Upstream connect.
    Connect,
    /// The timeout linked to a connect.
    ConnectTimeout,
    /// Receive for direction 0 (client to upstream) or 1.
    Recv(usize),
    /// Send for direction 0 (client to upstream) or 1.
    Send(usize),
    /// Cancel of every op on one of a connection's sockets.
    Cancel,
    /// Wait (a poll) until direction 0's (or 1's) source socket is readable, so that
    /// its splice-in finds data and does not block an async worker.
    SpliceWait(usize),
    /// Splice from direction 0's (or 1's) source socket into its pipe.
    SpliceIn(usize),
    /// Splice from direction 0's (or 1's) pipe to its destination socket.
    SpliceOut(usize),
}

impl Op {
    fn code(self) -> u64 {
        match self {
            Op::Accept => 1,
            Op::AcceptCancel => 2,
            Op::Wake => 3,
            Op::WakeCancel => 4,
            Op::Connect => 5,
            Op::ConnectTimeout => 6,
            Op::Recv(0) => 7,
            Op::Recv(_) => 8,
            Op::Send(0) => 9,
            Op::Send(_) => 10,
            Op::Cancel => 11,
            Op::SpliceIn(0) => 12,
            Op::SpliceIn(_) => 13,
            Op::SpliceOut(0) => 14,
            Op::SpliceOut(_) => 15,
            Op::SpliceWait(0) => 16,
            Op::SpliceWait(_) => 17,
        }
    }

    fn from_code(c: u64) -> Option<Op> {
        Some(match c {
            1 => Op::Accept,
            2 => Op::AcceptCancel,
            3 => Op::Wake,
            4 => Op::WakeCancel,
            5 => Op::Connect,
            6 => Op::ConnectTimeout,
            7 => Op::Recv(0),
            8 => Op::Recv(1),
            9 => Op::Send(0),
            10 => Op::Send(1),
            11 => Op::Cancel,
            12 => Op::SpliceIn(0),
            13 => Op::SpliceIn(1),
            14 => Op::SpliceOut(0),
            15 => Op::SpliceOut(1),
            16 => Op::SpliceWait(0),
            17 => Op::SpliceWait(1),
            _ => return None,
        })
    }
}

const GEN_MASK: u32 = 0x00FF_FFFF;

/// The next generation after `gen` (24 bits, wrapping).
pub fn next_gen(gen: u32) -> u32 {
    gen.wrapping_add(1) & GEN_MASK
}

/// Pack an op, an index and a generation.
pub fn encode(op: Op, index: u32, gen: u32) -> u64 {
    (op.code() << 56) | (u64::from(gen & GEN_MASK) << 32) | u64::from(index)
}

/// Unpack; `None` for a value this worker never produced.
pub fn decode(user_data: u64) -> Option<(Op, u32, u32)> {
    let op = Op::from_code(user_data >> 56)?;
    let gen = u32::try_from((user_data >> 32) & u64::from(GEN_MASK)).ok()?;
    let index = u32::try_from(user_data & u64::from(u32::MAX)).ok()?;
    Some((op, index, gen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for op in [
            Op::Accept,
            Op::AcceptCancel,
            Op::Wake,
            Op::WakeCancel,
            Op::Connect,
            Op::ConnectTimeout,
            Op::Recv(0),
            Op::Recv(1),
            Op::Send(0),
            Op::Send(1),
            Op::Cancel,
            Op::SpliceIn(0),
            Op::SpliceIn(1),
            Op::SpliceOut(0),
            Op::SpliceOut(1),
            Op::SpliceWait(0),
            Op::SpliceWait(1),
        ] {
            for (index, gen) in [(0, 0), (u32::MAX, GEN_MASK), (7, 12345)] {
                assert_eq!(decode(encode(op, index, gen)), Some((op, index, gen)));
            }
        }
        assert_eq!(decode(0), None);
        assert_eq!(next_gen(GEN_MASK), 0);
    }
}
