use std::process::Command;

// Rebuild the kernel object when bpf-linker changes (for instance after `cargo xtask setup` rebuilt it
// against a different LLVM): the object's code depends on the linker's LLVM as much as on our sources.
fn main() {
    let linker = Command::new("sh")
        .args(["-c", "command -v bpf-linker"])
        .output();
    if let Ok(out) = linker {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !path.is_empty() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
