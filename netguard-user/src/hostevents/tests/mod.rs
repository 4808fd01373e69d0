//! Unit tests of the auth-log sensor (no root needed).

mod driver;
mod sshd;
mod stamp;
mod tail;
