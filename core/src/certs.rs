//! Certs (being written).
