//! The datapath on pinned state: open (reuse or stage maps), swap the program into the pinned link,
//! commit the staged pins, and remove everything on an explicit detach.

use std::path::{Path, PathBuf};

use aya::programs::{
    ProgramError,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use netguard_common::programs;

use super::{
    AttachMode, Attachment, Datapath, DatapathConfig, DatapathError, LinkHandle, OBJECT, pin,
};

pub(super) struct Pins {
    lock: pin::PinLock,
    plan: pin::PinPlan,
}

/// Suffix of maps and programs staged by a start that has not swapped yet.
/// (bpffs refuses names with a dot.)
const STAGED: &str = "_new";

fn pin_err(what: String) -> DatapathError {
    DatapathError::Pin {
        what,
        hint: String::new(),
    }
}

/// Removes what an interrupted start staged: no running program references it.
fn remove_staged(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(STAGED) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The mode the pinned link was created in, recorded as an empty `mode-<mode>` directory.
fn recorded_mode(dir: &Path) -> Option<AttachMode> {
    [AttachMode::Driver, AttachMode::Skb]
        .into_iter()
        .find(|m| dir.join(format!("mode-{}", m.as_str())).is_dir())
}

fn record_mode(dir: &Path, mode: AttachMode) {
    for m in [AttachMode::Driver, AttachMode::Skb] {
        let _ = std::fs::remove_dir(dir.join(format!("mode-{}", m.as_str())));
    }
    let _ = std::fs::create_dir(dir.join(format!("mode-{}", mode.as_str())));
}

/// Removes a netlink-attached XDP program (no bpf_link handle exists for it).
pub(super) fn netlink_off(iface: &str) {
    let _ = std::process::Command::new("ip")
        .args(["link", "set", "dev", iface, "xdp", "off"])
        .status();
}

fn attach_err(iface: &str, mode: AttachMode, source: ProgramError) -> DatapathError {
    DatapathError::Attach {
        iface: iface.into(),
        mode: mode.as_str(),
        source: Box::new(source),
        hint: "",
    }
}

impl Datapath {
    /// Loads the datapath on the state pinned for `iface` under `bpffs` (creating what is missing):
    /// compatible maps are reused with their entries, flows and counters; an incompatible group is
    /// staged anew, to be filled by the caller before [`Datapath::attach`] swaps the program in.
    /// Holds the pin directory's lock until dropped: a second daemon on `iface` is refused.
    pub fn open_pinned(
        config: &DatapathConfig,
        bpffs: &Path,
        iface: &str,
    ) -> Result<Self, DatapathError> {
        let c_iface = std::ffi::CString::new(iface)
            .map_err(|_| DatapathError::NoSuchInterface(iface.into()))?;
        // SAFETY: a valid NUL-terminated string.
        if unsafe { libc::if_nametoindex(c_iface.as_ptr()) } == 0 {
            return Err(DatapathError::NoSuchInterface(iface.into()));
        }
        pin::check_bpffs(bpffs)?;
        let dir = pin::pin_dir(bpffs, iface);
        let lock = pin::lock(&dir)?;
        remove_staged(&dir);
        let shapes = pin::expected_shapes(OBJECT, config, Self::events_bytes(config))?;
        let plan = pin::plan(&dir, &shapes);
        let paths: Vec<(&'static str, PathBuf)> = pin::pinned_maps()
            .map(|n| (n, plan.path_for(&dir, n)))
            .collect();
        let mut dp = Self::load_with(config, &paths)?;
        let blocked = dp.blocklist.adopt()?;
        let allowed = dp.allowlist.adopt()?;
        if !plan.replaced.is_empty() {
            let mut reasons: Vec<&str> = plan.replaced.iter().map(|(_, r)| r.as_str()).collect();
            reasons.dedup();
            let names: Vec<&str> = plan.replaced.iter().map(|(n, _)| *n).collect();
            log::warn!(
                "pinned maps {} in {} are incompatible with this build ({}): new maps are built and filled from the store while the running program keeps enforcing the old ones; the program is then swapped in atomically and the old pins deleted",
                names.join(","),
                dir.display(),
                reasons.join("; ")
            );
        } else if plan.reused.is_empty() {
            log::info!("no pinned state in {}: creating it", dir.display());
        } else {
            log::info!(
                "pinned state in {} reused (layout v{}): {blocked} blocklist and {allowed} allowlist entries still enforced, flows and counters carry on",
                dir.display(),
                pin::LAYOUT_VERSION
            );
        }
        dp.pins = Some(Pins { lock, plan });
        Ok(dp)
    }

    /// The pin directory, when the state is pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(|p| p.lock.dir.as_path())
    }

    /// The bpf_link's id and the id of the program it runs, when attached through a pinned link.
    pub fn link_ids(&self) -> Option<(u32, u32)> {
        match &self.attachment.as_ref()?.link {
            LinkHandle::Pinned(fd) => fd.info().ok().map(|i| (i.id(), i.program_id())),
            _ => None,
        }
    }

    /// Swaps this program into the pinned link (bpf_link_update: atomic, the interface never runs
    /// without it), or creates and pins the link on a first start; then commits the staged pins.
    pub(super) fn attach_pinned(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<AttachMode, DatapathError> {
        let dir = self.pin_dir().expect("pinned").to_owned();
        let staged_prog = dir.join(format!("{}{STAGED}", pin::PROG_PIN));
        let _ = std::fs::remove_file(&staged_prog);
        self.program_mut(programs::NETGUARD)
            .pin(&staged_prog)
            .map_err(|e| {
                pin_err(format!(
                    "cannot pin the program at {}: {e:?}",
                    staged_prog.display()
                ))
            })?;
        let link_path = dir.join(pin::LINK_PIN);
        let mut handle = None;
        let mut used = mode;
        if link_path.exists() {
            let reused = PinnedLink::from_pin(&link_path)
                .map(FdLink::from)
                .and_then(XdpLink::try_from);
            match reused {
                Ok(link) => {
                    let prog = self.program_mut(programs::NETGUARD);
                    match prog.attach_to_link(link) {
                        Ok(id) => {
                            let link =
                                prog.take_link(id).map_err(|e| attach_err(iface, mode, e))?;
                            let fd = FdLink::try_from(link)
                                .map_err(|e| pin_err(format!("the updated link: {e}")))?;
                            handle = Some(LinkHandle::Pinned(fd));
                            used = recorded_mode(&dir).unwrap_or(mode);
                            if mode != AttachMode::Auto && used != mode {
                                log::warn!(
                                    "the pinned link on {iface} runs in {} mode, not the {} mode asked for: it is kept (no gap); `netguard detach --iface {iface}` first to change the mode",
                                    used.as_str(),
                                    mode.as_str()
                                );
                            }
                        }
                        Err(e) => log::warn!(
                            "the pinned link {} cannot be updated ({e}): the interface was probably recreated; attaching anew",
                            link_path.display()
                        ),
                    }
                }
                Err(e) => log::warn!(
                    "{} is not a usable XDP link ({e}); attaching anew",
                    link_path.display()
                ),
            }
            if handle.is_none() {
                let _ = std::fs::remove_file(&link_path);
            }
        }
        let handle = match handle {
            Some(h) => h,
            None => {
                let (id, m) = match self.attach_fresh(iface, mode) {
                    Ok(x) => x,
                    Err(e) => {
                        // Nothing was enforcing: pins this start created go, and nothing is left.
                        let fresh = self.pins.as_ref().is_some_and(|p| p.plan.reused.is_empty());
                        if fresh {
                            let _ = self.remove_pins(iface);
                        }
                        return Err(e);
                    }
                };
                used = m;
                let link = self
                    .program_mut(programs::NETGUARD)
                    .take_link(id)
                    .map_err(|e| attach_err(iface, m, e))?;
                match FdLink::try_from(link) {
                    Ok(fd) => {
                        let pinned = fd.pin(&link_path).map_err(|e| {
                            pin_err(format!(
                                "cannot pin the link at {}: {e}",
                                link_path.display()
                            ))
                        })?;
                        record_mode(&dir, m);
                        LinkHandle::Pinned(FdLink::from(pinned))
                    }
                    Err(_) => {
                        log::warn!(
                            "no bpf_link for XDP on {iface} (driver or kernel): attached through netlink. The program stays attached across restarts and a restart replaces it atomically, but without the expected-program check; `netguard detach` removes it"
                        );
                        LinkHandle::Netlink
                    }
                }
            }
        };
        self.commit(&dir)?;
        self.attachment = Some(Attachment {
            link: handle,
            iface: iface.into(),
            mode: used,
        });
        if let Some((link, prog)) = self.link_ids() {
            log::info!(
                "enforcing on {iface}: XDP link {link} runs program {prog} (pinned in {})",
                dir.display()
            );
        }
        Ok(used)
    }

    /// After the swap: the staged maps and program replace their old pins (which the kernel frees
    /// with the old program), and the layout version is pinned.
    fn commit(&mut self, dir: &Path) -> Result<(), DatapathError> {
        let pins = self.pins.as_ref().expect("pinned");
        for (name, _) in &pins.plan.replaced {
            let from = dir.join(format!("{name}{STAGED}"));
            std::fs::rename(&from, dir.join(name))
                .map_err(|e| pin_err(format!("cannot move {} into place: {e}", from.display())))?;
        }
        let staged_prog = dir.join(format!("{}{STAGED}", pin::PROG_PIN));
        std::fs::rename(&staged_prog, dir.join(pin::PROG_PIN))
            .map_err(|e| pin_err(format!("cannot move the program pin into place: {e}")))?;
        if pin::read_layout(dir) != Some(pin::LAYOUT_VERSION) {
            pin::write_layout(dir)?;
        }
        if !pins.plan.replaced.is_empty() {
            log::info!(
                "swapped the new program in; the {} incompatible old map(s) are unpinned",
                pins.plan.replaced.len()
            );
        }
        Ok(())
    }

    /// Removes every pin (and the directory): what `--detach-on-exit` and `netguard detach` do.
    pub(super) fn remove_pins(&mut self, _iface: &str) -> Result<(), DatapathError> {
        match self.pins.take() {
            Some(p) => pin::remove_all(&p.lock.dir).map(|_| ()),
            None => Ok(()),
        }
    }

    /// `netguard detach`: removes the program and every pin of `iface` under `bpffs`. Refused while a
    /// daemon holds the interface. Returns how many pins were removed.
    pub fn detach_pinned(bpffs: &Path, iface: &str) -> Result<usize, DatapathError> {
        pin::check_bpffs(bpffs)?;
        let dir = pin::pin_dir(bpffs, iface);
        if !dir.exists() {
            return Ok(0);
        }
        let lock = pin::lock(&dir)?;
        let netlink = !dir.join(pin::LINK_PIN).exists() && dir.join(pin::PROG_PIN).exists();
        let n = pin::remove_all(&lock.dir)?;
        if netlink {
            netlink_off(iface);
        }
        Ok(n)
    }
}
