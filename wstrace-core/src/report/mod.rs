//! `wstrace report`'s pure half, over lines already read: `summary`
//! (counting, text and JSON), `frames` (stacks read back, both frame
//! shapes), `chains` (proxy chains joined across hosts), `row` (one listed
//! close, bounded), `html` (the page). Opening files (regular files only,
//! gzip) and the flags are `wstrace::report`.
#[cfg(test)]
mod chain_tests;
pub mod chains;
pub mod frames;
pub mod html;
pub mod row;
pub mod summary;
