//! NetGuard userspace: the XDP datapath loader and its typed map API, configuration, and the daemon.
pub mod api;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod detect;
pub mod events;
pub mod geo;
pub mod hostevents;
pub mod logging;
pub mod metrics;
pub mod redis_url;
pub mod sensor;
pub mod statedir;
pub mod train;
pub mod trust;
