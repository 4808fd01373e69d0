//! Shared by the console's browser tests (tests/tests/console*.rs): the lab's tokens and config, curl
//! in a namespace, and waiting on the page with its errors in the panic message.

use std::path::Path;

use serde_json::{Value, json};

use crate::browser::Browser;
use crate::netns::run_in;

pub const ADMIN: &str = "console-admin-token-0123456789abcdef";
pub const OPERATOR: &str = "console-operator-token-0123456789abcdef";
pub const VIEWER: &str = "console-viewer-token-0123456789abcdef";
pub const AGENT: &str = "console-agent-token-0123456789abcdef";
/// A config file in `dir` with an operator, a viewer and an agent token (VM "win-1"); its path.
pub fn config(dir: &Path) -> String {
    let path = dir.join("netguard.toml");
    std::fs::write(
        &path,
        format!(
            "[[api.tokens]]\nname = \"ops\"\nrole = \"operator\"\ntoken = \"{OPERATOR}\"\n\
             [[api.tokens]]\nname = \"watcher\"\nrole = \"viewer\"\ntoken = \"{VIEWER}\"\n\
             [[api.tokens]]\nname = \"win-agent\"\nrole = \"agent\"\ntoken = \"{AGENT}\"\nvm_id = \"win-1\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// curl inside the sensor namespace: (status, headers + body).
pub fn curl(ns: &str, args: &[&str]) -> (u16, String) {
    let mut a = vec!["curl", "-s", "-m", "5", "-i", "-w", "\n%{http_code}"];
    a.extend(args);
    let out = run_in(ns, &a);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Waits for `expr` to be truthy in the page; on a timeout, panics with the page's errors and text.
pub fn wait_until(b: &mut Browser, expr: &str, timeout_ms: u64) -> Value {
    match b.try_call(json!({"cmd": "waitFor", "expr": expr, "timeout": timeout_ms})) {
        Ok(v) => v,
        Err(e) => {
            let rep = b.try_call(json!({"cmd": "report"}));
            let text = b.try_call(json!({"cmd": "evaluate", "expr": "document.getElementById('view').innerText.slice(0, 3000)"}));
            panic!("waiting for {expr}: {e}\npage report: {rep:?}\nview text: {text:?}")
        }
    }
}

/// axe-core on the current view: the serious and critical violations.
pub fn axe_serious(b: &mut Browser, view: &str) -> Vec<String> {
    let v = b.call(json!({"cmd": "axe"}));
    v.as_array()
        .unwrap()
        .iter()
        .filter(|x| matches!(x["impact"].as_str(), Some("serious" | "critical")))
        .map(|x| format!("{view}: {x}"))
        .collect()
}

pub fn shot(b: &mut Browser, name: &str) {
    b.call(json!({"cmd": "screenshot", "name": name}));
}
