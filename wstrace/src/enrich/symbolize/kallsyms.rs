//! `/proc/kallsyms` as one compact table: sorted addresses, and the names
//! in one string.
//!
//! Why not blazesym's kernel source: it keeps a `Box<str>` per symbol in a
//! vector first reserved for 200,000 of them. With this host's ~121,000
//! symbols that was 10.2 MiB of heap at its peak (heaptrack under churn),
//! the largest single holder in the daemon after the reader's queue. Here
//! a symbol costs its name's bytes plus 12 (an 8-byte address and a 4-byte
//! name start): ~4.5 MiB for the same file, built in one pass.
//!
//! Lookups are the same as blazesym's: the symbol at or below the address,
//! the first listed of several at one address, addresses of zero (what an
//! unprivileged reader or `kptr_restrict=2` sees) skipped, the module
//! column ignored.

use std::io::BufRead;

#[derive(Debug, Default)]
pub(super) struct Kallsyms {
    /// Symbol addresses, ascending.
    addrs: Vec<u64>,
    /// Where each symbol's name starts in `names` (same order as `addrs`).
    starts: Vec<u32>,
    /// Every name, each ended by `\n`, in the file's order.
    names: String,
}

/// Names larger than this in all are not kept (a `u32` start must reach
/// them; a real kallsyms is ~3 MiB of names).
const NAMES_MAX: usize = u32::MAX as usize;

impl Kallsyms {
    /// Parses kallsyms text (`<hex address> <type> <name> [module]` lines).
    /// Lines that do not parse are skipped, as blazesym skipped them.
    pub(super) fn parse(mut input: impl BufRead) -> std::io::Result<Self> {
        let mut addrs: Vec<u64> = Vec::new();
        let mut starts: Vec<u32> = Vec::new();
        let mut names = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            if input.read_line(&mut line)? == 0 {
                break;
            }
            let mut tokens = line.split_ascii_whitespace();
            let (Some(addr), Some(_kind), Some(name)) =
                (tokens.next(), tokens.next(), tokens.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 || names.len() + name.len() + 1 > NAMES_MAX {
                continue;
            }
            addrs.push(addr);
            starts.push(names.len() as u32);
            names.push_str(name);
            names.push('\n');
        }
        // kallsyms is nearly sorted already (15 of ~121,000 symbols out of
        // order on this host: modules, BPF programs), so the table is built
        // in place and only reordered when it must be, through 4 bytes a
        // symbol, not a 16-byte (address, name) pair for every symbol: the
        // table is loaded at the first close, when a churn's queue fills.
        if !addrs.is_sorted() {
            let mut order: Vec<u32> = (0..addrs.len() as u32).collect();
            // Stable: of several symbols at one address the first listed wins.
            order.sort_by_key(|&i| addrs[i as usize]);
            addrs = order.iter().map(|&i| addrs[i as usize]).collect();
            starts = order.iter().map(|&i| starts[i as usize]).collect();
        }
        addrs.shrink_to_fit();
        starts.shrink_to_fit();
        names.shrink_to_fit();
        Ok(Self {
            addrs,
            starts,
            names,
        })
    }

    /// The symbol `addr` lies in (the last one starting at or below it) and
    /// the offset from its start; None below the first symbol or when the
    /// table is empty.
    pub(super) fn find(&self, addr: u64) -> Option<(&str, u64)> {
        let above = self.addrs.partition_point(|&a| a <= addr);
        let at = self.addrs.get(above.checked_sub(1)?).copied()?;
        // The first of the symbols sharing that address.
        let first = self.addrs.partition_point(|&a| a < at);
        Some((self.name(first)?, addr - at))
    }

    fn name(&self, i: usize) -> Option<&str> {
        let rest = self.names.get(*self.starts.get(i)? as usize..)?;
        Some(rest.split('\n').next().unwrap_or(rest))
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Heap bytes the table holds.
    #[cfg(test)]
    pub(super) fn heap_bytes(&self) -> usize {
        self.addrs.capacity() * 8 + self.starts.capacity() * 4 + self.names.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Kallsyms {
        Kallsyms::parse(text.as_bytes()).expect("parse from memory")
    }

    #[test]
    fn finds_the_symbol_at_or_below_an_address() {
        let k = table(
            "ffffffff81000100 T foo\n\
             ffffffff81000000 T _stext\n\
             ffffffff81000200 t bar\n\
             ffffffffc0000000 t mod_fn\t[mymod]\n",
        );
        assert_eq!(k.len(), 4);
        assert_eq!(k.find(0xffffffff81000105), Some(("foo", 5)));
        assert_eq!(k.find(0xffffffff81000100), Some(("foo", 0)));
        assert_eq!(k.find(0xffffffff810000ff), Some(("_stext", 0xff)));
        assert_eq!(k.find(0xffffffff81000200), Some(("bar", 0)));
        // The module column is not part of the name.
        assert_eq!(k.find(0xffffffffc0000010), Some(("mod_fn", 0x10)));
        // Past the last symbol: it still names it (the caller bounds the offset).
        assert_eq!(k.find(0xffffffffc0200000), Some(("mod_fn", 0x200000)));
        assert_eq!(k.find(0x10), None);
        assert_eq!(k.find(0), None);
    }

    #[test]
    fn of_several_symbols_at_one_address_the_first_listed_names_it() {
        let k = table(
            "ffffffff81000000 T a\n\
             ffffffff81000100 T first\n\
             ffffffff81000100 T second\n\
             ffffffff81000100 t third\n\
             ffffffff81000200 T z\n",
        );
        assert_eq!(k.find(0xffffffff81000100), Some(("first", 0)));
        assert_eq!(k.find(0xffffffff81000150), Some(("first", 0x50)));
        assert_eq!(k.find(0xffffffff810001ff), Some(("first", 0xff)));
        assert_eq!(k.find(0xffffffff81000200), Some(("z", 0)));
    }

    #[test]
    fn hidden_addresses_and_bad_lines_are_skipped() {
        // kptr_restrict: every address zero, so nothing can be named.
        let k = table("0000000000000000 T _stext\n0000000000000000 T tcp_close\n");
        assert_eq!(k.len(), 0);
        assert_eq!(k.find(0xffffffff81234567), None);
        let k = table(
            "\n\
             nothex T bad\n\
             ffffffff81000000 T\n\
             ffffffff81000000\n\
             ffffffff81000010 T good\n",
        );
        assert_eq!(k.len(), 1);
        assert_eq!(k.find(0xffffffff81000011), Some(("good", 1)));
        assert_eq!(table("").find(1), None);
    }

    #[test]
    fn a_symbol_costs_its_name_and_twelve_bytes() {
        let text: String = (0..10_000u64)
            .map(|i| {
                format!(
                    "{:016x} t function_number_{i:05}\n",
                    0xffffffff81000000 + i * 64
                )
            })
            .collect();
        let k = table(&text);
        assert_eq!(k.len(), 10_000);
        assert_eq!(
            k.find(0xffffffff81000000 + 9_999 * 64 + 3),
            Some(("function_number_09999", 3))
        );
        // 21-byte names + newline + 12: 34 bytes each, with the vectors'
        // growth slack at most doubling the two index vectors.
        assert!(
            k.heap_bytes() <= 10_000 * (22 + 2 * 12),
            "{}",
            k.heap_bytes()
        );
    }
}
