//! (being written) Fault injection against pulls: a small server beside the real registry.
