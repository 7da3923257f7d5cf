//! wstrace's pure half: everything between a matched close report and the
//! text a person or a script reads, with no kernel, no privileges and no
//! I/O of its own (no aya, no libc, no tokio). The daemon (`wstrace`) feeds
//! it; `cargo test -p wstrace-core` runs as any user.
//!
//! - `model`: the types every stage shares (events, close reports, frames);
//! - `protocol`: the HTTP request head and WebSocket frames, parsed;
//! - `redact`: secrets out of request heads and command lines;
//! - `enrich`: the enrich stage's product, [`enrich::Enriched`] (the stage
//!   itself reads /proc and stays in `wstrace`);
//! - `diagnose`: the rules (why it closed, and the fix);
//! - `output`: text, JSON and storm folding, frames as text, escaping;
//! - `report`: `wstrace report`'s counting, chains across hosts and the
//!   HTML page, over lines already read.
//!
//! Imports point one way, as in the daemon: shared modules (`model`,
//! `protocol`, `redact`) import only each other, then enrich < diagnose <
//! output < report (`wstrace/tests/module_graph.rs` checks both crates).
pub mod diagnose;
pub mod enrich;
pub mod model;
pub mod output;
pub mod protocol;
pub mod redact;
pub mod report;
