//! Builds the XDP program (netguard-ebpf) for the BPF target and places the object in OUT_DIR, where
//! `src/datapath` embeds it. The kernel crate is a build-dependency, so cargo re-runs this script
//! whenever it changes.
//!
//! Toolchain: nightly with rust-src when present; otherwise stable with rust-src and RUSTC_BOOTSTRAP=1
//! (the eBPF build needs `-Z build-std=core`). `NETGUARD_EBPF_TOOLCHAIN` forces one or the other.
use std::{env, path::Path, process::Command};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn has_rust_src(toolchain: &str) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=NETGUARD_EBPF_TOOLCHAIN");
    let forced = env::var("NETGUARD_EBPF_TOOLCHAIN").ok();
    let toolchain = match forced.as_deref() {
        Some(t) => t.to_string(),
        None if has_rust_src("nightly") => "nightly".to_string(),
        None if has_rust_src("stable") => "stable".to_string(),
        None => {
            return Err(anyhow!(
                "no Rust toolchain with rust-src can build the eBPF program; run `cargo xtask setup` \
                 (or `rustup component add rust-src --toolchain nightly`)"
            ));
        }
    };
    if toolchain != "nightly" {
        // Stable refuses -Z build-std unless told it is bootstrapping; aya-build reads this variable
        // and the nested cargo inherits it. This script runs single-threaded, before any child.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
        let why = if forced.is_some() {
            "NETGUARD_EBPF_TOOLCHAIN"
        } else {
            "no nightly with rust-src found"
        };
        println!(
            "cargo:warning=building the eBPF program with `{toolchain}` + RUSTC_BOOTSTRAP=1 ({why})"
        );
    }

    let metadata_root = env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&metadata_root).join("../netguard-ebpf");
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("netguard-ebpf not found at {}", ebpf_dir.display()))?;
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    let toolchain = Toolchain::Custom(Box::leak(toolchain.into_boxed_str()));
    aya_build::build_ebpf(
        [Package {
            name: "netguard-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        toolchain,
    )
    .context("building the eBPF program failed; if bpf-linker or rust-src is missing, run `cargo xtask setup`")
}
