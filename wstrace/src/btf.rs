//! Kernel struct offsets from the running kernel's BTF. (Being written.)
