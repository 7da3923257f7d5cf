//! Uprobes on a Go program's `crypto/tls` (wstrace-ebpf probes/gotls.rs):
//! an entry probe on `(*Conn).Write` and `(*Conn).Read`, and a plain uprobe
//! on each RET instruction of `Read` in place of a uretprobe (which would
//! rewrite a return address on a goroutine stack Go may move). Where they
//! go comes from `enrich::gotls` / `enrich::tls::elf_tls`; they are opened
//! and attached per process like the OpenSSL ones (`attach::tls`).
use super::tls::Hook;

/// The programs, each loaded once (with the OpenSSL ones, `tls::load`).
pub const PROGRAMS: [&str; 3] = ["gotls_write", "gotls_read", "gotls_read_ret"];

/// The uprobes one Go binary gets: file offsets of `(*Conn).Write`,
/// `(*Conn).Read` and each RET of `Read`.
pub fn hooks(write: u64, read: u64, read_returns: &[u64]) -> Vec<Hook> {
    let mut out = vec![
        Hook {
            program: "gotls_write",
            function: "crypto/tls.(*Conn).Write",
            offset: write,
            retprobe: false,
        },
        Hook {
            program: "gotls_read",
            function: "crypto/tls.(*Conn).Read",
            offset: read,
            retprobe: false,
        },
    ];
    out.extend(read_returns.iter().map(|&offset| Hook {
        program: "gotls_read_ret",
        function: "a RET of crypto/tls.(*Conn).Read",
        offset,
        retprobe: false,
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_read_return_gets_a_plain_uprobe() {
        let h = hooks(0x1000, 0x2000, &[0x2040, 0x2100]);
        let got: Vec<_> = h.iter().map(|h| (h.program, h.offset)).collect();
        assert_eq!(
            got,
            vec![
                ("gotls_write", 0x1000),
                ("gotls_read", 0x2000),
                ("gotls_read_ret", 0x2040),
                ("gotls_read_ret", 0x2100)
            ]
        );
        assert!(h.iter().all(|h| !h.retprobe), "never a uretprobe on Go");
        assert!(h.iter().all(|h| PROGRAMS.contains(&h.program)));
    }
}
