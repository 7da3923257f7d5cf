//! The one recording path every probe set feeds: mark a socket upgraded, and
//! turn what happens to an upgraded socket into ring-buffer events.
//!
//! - `emit`: the fair-share gate, reserving an `EVENTS` entry, the header,
//!   loss counting;
//! - `classify`: what a write's first bytes are (101, request, control frame);
//! - `upgrade`: marking a socket upgraded, the client's request writer;
//! - `state`: TCP transitions, resets, destruction, the accepted mark;
//! - `close`: a process closing an upgraded socket, with its stacks;
//! - `signal`: a crash, and signals or OOM kills aimed at an upgrader;
//! - `data`: control frame bytes and their continuation across writes;
//! - `receive`: the read path (request head, the client's 101, frames read);
//! - `tls`: plaintext from the TLS uprobes tied to the thread's socket I/O;
//! - `write`: what a write on a socket means, for every probe set.
mod classify;
mod close;
mod data;
mod emit;
mod receive;
mod signal;
mod state;
mod tls;
mod upgrade;
mod write;

pub use classify::{Write, classify_write};
pub use close::close;
pub use data::resume_window_open;
pub use receive::{known_not_http, read_entry, read_exit};
pub use signal::{crash, is_upgrader, signal};
pub use state::{connection_established, destroy, forget_head, reset, state_change};
pub use tls::{
    take_tls_write, tls_plaintext_read, tls_read_abandon, tls_read_entry, tls_read_return,
    tls_write_entry,
};
pub use upgrade::is_upgraded;
pub use write::{Written, on_socket_write};
