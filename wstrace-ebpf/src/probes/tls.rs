//! Uprobes on an OpenSSL-compatible TLS library (libssl, or a binary that
//! embeds it with symbols), attached by the daemon per server process
//! (`attach::tls`): the plaintext of `SSL_write` and `SSL_read`, tied to
//! the socket by the thread's next socket write or its socket read inside
//! the call (record/tls.rs). No OpenSSL struct is read.
//!
//! Checked against OpenSSL 1.1.1 and 3.x (ssl.h), x86_64 System V ABI:
//! `int SSL_write(SSL *s, const void *buf, int num)`,
//! `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`,
//! `int SSL_read(SSL *s, void *buf, int num)`,
//! `int SSL_read_ex(SSL *s, void *buf, size_t num, size_t *readbytes)`.
//! BoringSSL has the same four.
use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{ptr::UPtr, record};

/// The `num` argument: an `int` for SSL_write/SSL_read (the upper half of
/// the register is undefined, and negative is an error), a `size_t` for the
/// `_ex` forms. Either way more than 2 GiB is never copied, so the low 31
/// bits are all that matter.
#[inline(always)]
fn num(ctx: &ProbeContext) -> u64 {
    let v: u64 = ctx.arg(2).unwrap_or(0);
    let v = v as u32;
    if v > i32::MAX as u32 { 0 } else { v as u64 }
}

/// SSL_write and SSL_write_ex entry.
#[uprobe]
pub fn tls_ssl_write(ctx: ProbeContext) -> u32 {
    let buf = UPtr::new(ctx.arg(1).unwrap_or(0));
    record::tls_write_entry(buf, num(&ctx), wstrace_common::FLAG_TLS_OPENSSL);
    0
}

/// SSL_read entry.
#[uprobe]
pub fn tls_ssl_read(ctx: ProbeContext) -> u32 {
    let buf = UPtr::new(ctx.arg(1).unwrap_or(0));
    record::tls_read_entry(buf, num(&ctx), UPtr::NULL);
    0
}

/// SSL_read_ex entry: also where the byte count will be written.
#[uprobe]
pub fn tls_ssl_read_ex(ctx: ProbeContext) -> u32 {
    let buf = UPtr::new(ctx.arg(1).unwrap_or(0));
    let readbytes = UPtr::new(ctx.arg(3).unwrap_or(0));
    record::tls_read_entry(buf, num(&ctx), readbytes);
    0
}

/// SSL_read return: the byte count, or <= 0.
#[uretprobe]
pub fn tls_ssl_read_ret(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    record::tls_read_return(ret as i32 as i64, false);
    0
}

/// SSL_read_ex return: 1 on success, the count at `readbytes`.
#[uretprobe]
pub fn tls_ssl_read_ex_ret(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    record::tls_read_return(ret as i32 as i64, true);
    0
}
