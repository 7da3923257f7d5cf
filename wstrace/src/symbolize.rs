//! Stack symbolization. (Being written.)
