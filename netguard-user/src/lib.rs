//! NetGuard userspace: the XDP datapath loader and its typed map API, configuration, and the daemon.
pub mod config;
pub mod datapath;
pub mod metrics;
pub mod control;
pub mod api;
pub mod client;
pub mod detect;
pub mod train;
pub mod hostevents;
pub mod events;
pub mod sensor;
pub mod geo;
pub mod trust;
pub mod redis_url;
pub mod statedir;
