//! The datapath on pinned state: open (reuse or stage maps), swap the program into the pinned link,
//! commit the staged pins, and remove everything on an explicit detach.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::programs::{
    ProgramError,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use netguard_common::programs;

use super::{
    AttachMode, Attachment, Datapath, DatapathConfig, DatapathError, LinkHandle, OBJECT, carry,
    netlink, pin,
};

pub(super) struct Pins {
    lock: pin::PinLock,
    plan: pin::PinPlan,
    /// Attach through netlink even where a bpf_link would work (`--xdp-netlink`; tests the fallback).
    netlink: bool,
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

/// How the program was attached, recorded as an empty `<kind>-<mode>` directory (a bpffs holds no
/// files): `link-skb`, `netlink-driver`, ...
fn recorded(dir: &Path, netlink: bool) -> Option<AttachMode> {
    let kind = if netlink { "netlink" } else { "link" };
    [AttachMode::Driver, AttachMode::Skb]
        .into_iter()
        .find(|m| dir.join(format!("{kind}-{}", m.as_str())).is_dir())
}

fn record(dir: &Path, mode: AttachMode, netlink: bool) {
    for kind in ["link", "netlink"] {
        for m in [AttachMode::Driver, AttachMode::Skb] {
            let _ = std::fs::remove_dir(dir.join(format!("{kind}-{}", m.as_str())));
        }
    }
    let kind = if netlink { "netlink" } else { "link" };
    let _ = std::fs::create_dir(dir.join(format!("{kind}-{}", mode.as_str())));
}

/// Removes the netlink-attached program pinned as `prog` in `dir`, and only it.
fn netlink_detach_pinned(dir: &Path, iface: &str) {
    let mode = recorded(dir, true).unwrap_or(AttachMode::Skb);
    let res = netlink::pinned_fd(&dir.join(pin::PROG_PIN))
        .and_then(|fd| netlink::detach(netlink::ifindex(iface), fd.as_raw_fd(), mode));
    if let Err(e) = res {
        log::warn!("removing the netlink-attached program from {iface}: {e}");
    }
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
        let same_layout = pin::read_layout(&dir) == Some(pin::LAYOUT_VERSION);
        let mut dp = Self::load_with(config, &paths)?;
        // A resize keeps the contents: entries with their hit counters, flows, counters. (What the
        // old program counts between this copy and the swap is not carried.)
        if same_layout {
            for (name, _) in &plan.replaced {
                if !carry::CARRIED.contains(name) {
                    continue;
                }
                match carry::copy(&dir.join(name), &plan.path_for(&dir, name)) {
                    Ok(n) => log::debug!("carried {n} element(s) of {name} into its new map"),
                    Err(e) => log::warn!(
                        "could not carry the contents of {name} into its new map ({e}); the lists are filled from the store"
                    ),
                }
            }
        }
        let blocked = dp.blocklist.adopt()?;
        let allowed = dp.allowlist.adopt()?;
        if !plan.replaced.is_empty() {
            let mut reasons: Vec<&str> = plan.replaced.iter().map(|(_, r)| r.as_str()).collect();
            reasons.dedup();
            let names: Vec<&str> = plan.replaced.iter().map(|(n, _)| *n).collect();
            log::warn!(
                "pinned maps {} in {} are incompatible with this build ({}): new maps are built, given the old contents where the layout allows and filled from the store, while the running program keeps enforcing the old ones; the program is then swapped in atomically and the old pins deleted",
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
        dp.pins = Some(Pins {
            lock,
            plan,
            netlink: false,
        });
        Ok(dp)
    }

    /// Attach through netlink (XDP_FLAGS_REPLACE with the expected program on restarts) even where a
    /// bpf_link would work: the fallback's own path, for drivers without bpf_link and for tests.
    pub fn prefer_netlink(&mut self) {
        if let Some(p) = self.pins.as_mut() {
            p.netlink = true;
        }
    }

    /// The raw fd of the loaded `netguard` program.
    fn prog_fd(&self) -> Result<std::os::fd::RawFd, DatapathError> {
        self.program(programs::NETGUARD)
            .fd()
            .map(|fd| fd.as_fd().as_raw_fd())
            .map_err(|e| pin_err(format!("the program has no fd: {e}")))
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
                            used = recorded(&dir, false).unwrap_or(mode);
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
        // No bpf_link pinned but a program is: it was attached through netlink. Swap atomically,
        // and only if that very program is still the one attached.
        let prog_pin = dir.join(pin::PROG_PIN);
        if handle.is_none()
            && !link_path.exists()
            && prog_pin.exists()
            && let Some(m) = recorded(&dir, true)
        {
            let ifindex = netlink::ifindex(iface);
            let new = self.prog_fd()?;
            match netlink::pinned_fd(&prog_pin)
                .and_then(|old| netlink::replace(ifindex, new, old.as_raw_fd(), m))
            {
                Ok(()) => {
                    handle = Some(LinkHandle::Netlink);
                    used = m;
                }
                Err(e) => log::warn!(
                    "the netlink-attached program pinned in {} could not be replaced ({e}): it is no longer the one on {iface}; attaching anew",
                    dir.display()
                ),
            }
        }
        let netlink_first = self.pins.as_ref().is_some_and(|p| p.netlink);
        let handle = match handle {
            Some(h) => h,
            None if netlink_first => {
                let ifindex = netlink::ifindex(iface);
                let new = self.prog_fd()?;
                let tries: &[AttachMode] = match mode {
                    AttachMode::Auto => &[AttachMode::Driver, AttachMode::Skb],
                    AttachMode::Driver => &[AttachMode::Driver],
                    AttachMode::Skb => &[AttachMode::Skb],
                };
                let mut last = None;
                for m in tries {
                    match netlink::attach(ifindex, new, *m) {
                        Ok(()) => {
                            used = *m;
                            last = None;
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                if let Some(e) = last {
                    return Err(pin_err(format!(
                        "attaching XDP to {iface} through netlink failed: {e}"
                    )));
                }
                record(&dir, used, true);
                log::info!(
                    "attached to {iface} through netlink (--xdp-netlink): restarts swap with XDP_FLAGS_REPLACE and the expected program"
                );
                LinkHandle::Netlink
            }
            None => {
                let (id, m) = match self.attach_fresh(iface, mode) {
                    Ok(x) => x,
                    Err(e) => {
                        // Nothing was enforcing: pins this start created go, and nothing is left.
                        let fresh = self.pins.as_ref().is_some_and(|p| p.plan.reused.is_empty());
                        if fresh {
                            let _ = self.remove_pins(iface, false);
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
                        record(&dir, m, false);
                        LinkHandle::Pinned(FdLink::from(pinned))
                    }
                    Err(_) => {
                        record(&dir, m, true);
                        log::warn!(
                            "no bpf_link for XDP on {iface} (driver or kernel): attached through netlink. The program stays attached across restarts, and a restart swaps it atomically with XDP_FLAGS_REPLACE and the expected program; `netguard detach` removes it"
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
    /// A netlink-attached program is removed first (only if it is still ours).
    pub(super) fn remove_pins(&mut self, iface: &str, netlink: bool) -> Result<(), DatapathError> {
        if netlink && let Some(dir) = self.pin_dir() {
            netlink_detach_pinned(dir, iface);
        }
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
        if recorded(&dir, true).is_some() && dir.join(pin::PROG_PIN).exists() {
            netlink_detach_pinned(&dir, iface);
        }
        pin::remove_all(&lock.dir)
    }
}
