//! Pure formats: what users type and what files hold, parsed and printed. Nothing here
//! touches the cache or the network, and nothing here imports from the layers above.

pub mod clock;
pub mod digest;
pub(crate) mod par;
pub mod reference;
pub mod sif;
pub(crate) mod sif_write;
pub mod units;
