//! The sample config that `cargo xtask install` puts in /etc/netguard (packaging/netguard.toml) is
//! exactly the defaults: every key it sets is what netguard would use without it, so it documents the
//! defaults and never changes behaviour by being installed.

use netguard_user::config::Config;

const SAMPLE: &str = include_str!("../../packaging/netguard.toml");

#[test]
fn the_sample_config_is_the_defaults() {
    let parsed: Config = toml::from_str(SAMPLE).unwrap_or_else(|e| panic!("sample: {e}"));
    assert_eq!(parsed, Config::default());
}

#[test]
fn the_sample_config_has_every_section() {
    let defaults = toml::to_string(&Config::default()).expect("defaults serialise");
    let table: toml::Table = defaults.parse().unwrap();
    for (section, value) in &table {
        if value.is_table() {
            assert!(
                SAMPLE.contains(&format!("[{section}]")),
                "[{section}] is missing from packaging/netguard.toml"
            );
        }
    }
}

/// `NETGUARD_PRINT_DEFAULTS=1 cargo test -p netguard-user --test sample_config -- --nocapture`
/// prints the defaults as TOML, the starting point for the sample's text.
#[test]
fn print_defaults_on_request() {
    if std::env::var_os("NETGUARD_PRINT_DEFAULTS").is_some() {
        println!("{}", toml::to_string_pretty(&Config::default()).unwrap());
    }
}
