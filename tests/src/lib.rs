//! Support code for NetGuard's privileged integration tests and benchmark: crafted frames, a
//! network-namespace lab, shared fixtures and the million-prefix set. The tests themselves live in
//! `tests/` and run as root through `cargo xtask test`.

pub mod api_stack;
pub mod browser;
pub mod console_lab;
pub mod daemon;
pub mod fixtures;
pub mod frames;
pub mod mmdb;
pub mod netns;
pub mod pki;
pub mod prefixes;
pub mod redis_server;
pub mod spur;
pub mod sshd;
