//! How a manager reaches the other managers over the mutual-TLS cluster
//! port: raft messages (`raft`), writes handed to the leader (`writer`),
//! the dispatcher's and the remote agent's calls (`call`), and the address
//! book they share (`book`).

mod book;
pub mod call;
pub mod raft;
pub mod writer;

pub use book::AddressBook;
pub use call::PoolCall;
pub use raft::RaftLink;
pub use writer::{WriteError, Writer};
