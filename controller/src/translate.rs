//! Translation: from the index to the resources each kind of proxy consumes. Pure functions over
//! an index snapshot; no I/O.

pub mod agent;
