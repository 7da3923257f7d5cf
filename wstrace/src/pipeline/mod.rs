//! From the kernel's ring buffer to one report per closed upgraded socket:
//! `reader` copies records out, `decode` types them, `matcher` pairs each
//! socket's events into a `model::CloseReport`.
pub mod chain;
pub mod decode;
pub mod matcher;
pub mod reader;
