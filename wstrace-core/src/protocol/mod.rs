//! Wire formats, parsed from the bytes the kernel copied: the HTTP request
//! head a server answered with its 101, and WebSocket frames. Pure and
//! bounded: every input here comes from a remote client.
pub mod http;
pub mod wsframe;
