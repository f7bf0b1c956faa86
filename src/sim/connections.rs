//! Push connections a proposer replaced whose bytes still arrive (issue
//! 18): when a connection breaks or a partition cuts it, what the proposer
//! had sent may linger in the network (TCP retrying) and reach the node
//! after the new connection of the same proposer greeted and voted. The
//! node runs the daemon's claim rule (`consensus::claims`) on every
//! message, of live and lingering connections alike.

use std::collections::VecDeque;

use crate::consensus::claims::Claim;
use crate::consensus::messages::ProposerMessage;

/// A connection the proposer side closed whose messages to node `n` are
/// still in flight (each stays FIFO). Replies on it go nowhere: the
/// proposer forgot it.
pub struct Lingering {
    pub p: usize,
    pub n: usize,
    pub id: u64,
    pub to_node: VecDeque<(u64, ProposerMessage)>,
    /// The node's side of it: the claim rule's view.
    pub side: Claim,
}
