//! A third namespace hung off a lab's sensor namespace by its own veth pair: a host the sensor
//! depends on (its Redis server, a fleet peer) on a subnet of its own, 10.214.0.0/24. The same rules
//! as the lab: the veth is created inside our namespaces, device routes only (no default route), and
//! the namespace is deleted on drop.

use std::process::Command;

use crate::netns::{NetnsPair, run_in};

pub const SPUR_SENSOR_IF: &str = "ng-spur";
pub const SPUR_IF: &str = "ng-spur-p";
/// The sensor's end of the spur link.
pub const SPUR_SENSOR_V4: &str = "10.214.0.1";
/// The spur host's addresses: the first serves (Redis), the second is a second identity.
pub const SPUR_V4: [&str; 2] = ["10.214.0.2", "10.214.0.3"];

pub struct Spur {
    pub ns: String,
}

fn must(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "`ip {}` failed: {out:?}",
        args.join(" ")
    );
}

impl Spur {
    pub fn new(lab: &NetnsPair) -> Spur {
        let ns = format!("{}-f", lab.sensor.trim_end_matches("-s"));
        must(&["netns", "add", &ns]);
        let spur = Spur { ns: ns.clone() };
        must(&[
            "-n",
            &lab.sensor,
            "link",
            "add",
            SPUR_SENSOR_IF,
            "type",
            "veth",
            "peer",
            "name",
            SPUR_IF,
            "netns",
            &ns,
        ]);
        for (n, dev) in [
            (lab.sensor.as_str(), SPUR_SENSOR_IF),
            (ns.as_str(), SPUR_IF),
        ] {
            must(&["-n", n, "link", "set", "lo", "up"]);
            must(&["-n", n, "link", "set", dev, "up"]);
        }
        must(&[
            "-n",
            &lab.sensor,
            "addr",
            "add",
            &format!("{SPUR_SENSOR_V4}/24"),
            "dev",
            SPUR_SENSOR_IF,
        ]);
        for a in SPUR_V4 {
            must(&["-n", &ns, "addr", "add", &format!("{a}/24"), "dev", SPUR_IF]);
        }
        spur
    }

    /// Waits until the sensor reaches `addr` (ARP settled), at most 5 s.
    pub fn reachable(&self, lab: &NetnsPair, addr: &str) -> bool {
        (0..25).any(|_| {
            let ok = run_in(&lab.sensor, &["ping", "-c", "1", "-W", "1", "-n", addr])
                .status
                .success();
            if !ok {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            ok
        })
    }
}

impl Drop for Spur {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        crate::netns::release_bpffs(&self.ns);
    }
}
