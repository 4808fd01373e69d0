//! Pinned datapath state: the link, the program and every map that carries state live under
//! `<bpffs>/netguard/<iface>/`, so the kernel keeps enforcing while the daemon restarts, upgrades or
//! crashes.
//!
//! - A start reuses every pinned map that is compatible (type, key and value size, max entries,
//!   flags, and the layout version pinned beside them), and swaps its new program into the pinned
//!   link with `bpf_link_update`: the interface never runs without the blocklist.
//! - An incompatible group of maps (say, a resized blocklist) is created anew under `NAME_new`, filled
//!   by the caller while the old program keeps enforcing the old maps, and renamed over the old pins
//!   only after the swap.
//! - One daemon per interface: the pin directory is `flock`ed; a second one is told who holds it.

use std::{
    ffi::CString,
    fs::File,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData, MapInfo};
use netguard_common::maps;

use super::{DatapathConfig, DatapathError};

/// Bumped whenever the meaning of a pinned map's contents changes without its sizes changing. Pins
/// of another layout are rebuilt, never reused.
pub const LAYOUT_VERSION: u32 = 1;

/// Default bpffs mount point.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// The pinned map that holds [`LAYOUT_VERSION`] (a bpffs holds only BPF objects, not files).
pub const LAYOUT_PIN: &str = "LAYOUT";
/// The pinned XDP link and program.
pub const LINK_PIN: &str = "link";
pub const PROG_PIN: &str = "prog";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Maps replaced together: the blocklist's tables share its flags and /16 bitmap, so a partial
/// rebuild would let the old program skip a table the new flags call empty.
pub const GROUPS: [&[&str]; 6] = [
    &[
        maps::BLOCK_V4,
        maps::BLOCK_V6,
        maps::BLOCK_HOST_V4,
        maps::BLOCK_HOST_V6,
        maps::TABLE_FLAGS,
        maps::PREFIX16_V4,
    ],
    &[maps::ALLOW_V4, maps::ALLOW_V6, maps::ALLOW_FLAGS],
    &[maps::FLOWS],
    &[maps::COUNTERS],
    &[maps::EVENTS],
    &[maps::EVENT_BUDGET],
];

/// Every pinned map (the global-data maps `.rodata`/`.bss` and aya-log's buffer are not state).
pub fn pinned_maps() -> impl Iterator<Item = &'static str> {
    GROUPS.iter().flat_map(|g| g.iter().copied())
}

/// `<bpffs>/netguard/<iface>`.
pub fn pin_dir(bpffs: &Path, iface: &str) -> PathBuf {
    bpffs.join("netguard").join(iface)
}

/// Fails unless `root` is a bpffs whose pins outlive this process: a bpffs at all (inside
/// `ip netns exec`, `/sys` is a fresh sysfs and `/sys/fs/bpf` is not one), and, in a private mount
/// namespace, one that is also mounted in PID 1's namespace (a bpffs mounted only in here vanishes,
/// pins and all, with the last process of the namespace).
pub fn check_bpffs(root: &Path) -> Result<(), DatapathError> {
    let fix = format!(
        "mount a bpffs outside /sys in the host's mount namespace and pass it with --bpffs, e.g. \
         `mkdir -p /run/netguard/bpffs && mount -t bpf bpf /run/netguard/bpffs` before \
         `ip netns exec NS netguard run --bpffs /run/netguard/bpffs ...` (the pins then survive {})",
        "restarts"
    );
    let c = CString::new(root.as_os_str().as_bytes()).map_err(|_| DatapathError::Pin {
        what: format!("{} is not a valid path", root.display()),
        hint: String::new(),
    })?;
    // SAFETY: statfs on a NUL-terminated path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(DatapathError::Pin {
            what: format!(
                "the bpffs directory {} cannot be read ({})",
                root.display(),
                std::io::Error::last_os_error()
            ),
            hint: fix,
        });
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        let netns = if root.starts_with("/sys") {
            " (inside `ip netns exec`, /sys is remounted and /sys/fs/bpf is not a bpffs)"
        } else {
            ""
        };
        return Err(DatapathError::Pin {
            what: format!("{} is not a bpffs{netns}", root.display()),
            hint: fix,
        });
    }
    // PID 1's mounts (its namespace outlives ours); when they cannot be read, nothing can be told.
    let Ok(host) = std::fs::read_to_string("/proc/1/mountinfo") else {
        return Ok(());
    };
    let dev = std::fs::metadata(root)
        .map_err(|e| DatapathError::Pin {
            what: format!("{}: {e}", root.display()),
            hint: String::new(),
        })?
        .dev();
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let shared = host.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let fstype = f.iter().position(|x| *x == "-").and_then(|i| f.get(i + 1));
        f.get(2) == Some(&want.as_str()) && fstype == Some(&"bpf")
    });
    if shared {
        Ok(())
    } else {
        Err(DatapathError::Pin {
            what: format!(
                "the bpffs at {} is mounted only in this private mount namespace (as `ip netns exec` makes): \
                 it vanishes with the namespace's last process and takes the pins with it",
                root.display()
            ),
            hint: fix,
        })
    }
}

/// The pin directory, held exclusively (flock) for as long as this value lives.
pub struct PinLock {
    pub dir: PathBuf,
    _file: File,
}

/// Creates and locks `dir`. A second daemon is refused with the holder's pid.
pub fn lock(dir: &Path) -> Result<PinLock, DatapathError> {
    std::fs::create_dir_all(dir).map_err(|e| DatapathError::Pin {
        what: format!("cannot create the pin directory {}: {e}", dir.display()),
        hint: "run as root, on a bpffs (--bpffs)".into(),
    })?;
    let file = File::open(dir).map_err(|e| DatapathError::Pin {
        what: format!("cannot open {}: {e}", dir.display()),
        hint: String::new(),
    })?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = holder_pid(&file)
            .map(|p| format!("process {p}"))
            .unwrap_or_else(|| "another process".into());
        return Err(DatapathError::Pin {
            what: format!(
                "{} is held by {holder}: another netguard already runs on this interface",
                dir.display()
            ),
            hint: "stop it first (one daemon per interface), or use another --bpffs".into(),
        });
    }
    Ok(PinLock {
        dir: dir.to_owned(),
        _file: file,
    })
}

/// The pid holding a flock on `file`, from /proc/locks.
fn holder_pid(file: &File) -> Option<u32> {
    let m = file.metadata().ok()?;
    let (dev, ino) = (m.dev(), m.ino());
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let i = f.iter().position(|x| *x == want)?;
        (f.get(1) == Some(&"FLOCK")).then(|| f.get(i - 1)?.parse().ok())?
    })
}

/// What a map must look like for this build and config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {} key {} value {} max {} flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// The shapes of every pinned map in `object` once `config`'s sizes are applied (as the loader
/// will apply them).
pub fn expected_shapes(
    object: &[u8],
    config: &DatapathConfig,
    events_bytes: u32,
) -> Result<Vec<(&'static str, MapShape)>, DatapathError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| DatapathError::Pin {
        what: format!("cannot parse the XDP object: {e}"),
        hint: "rebuild netguard".into(),
    })?;
    let max = |name: &str| -> Option<u32> {
        Some(match name {
            maps::BLOCK_V4 | maps::BLOCK_HOST_V4 => config.blocklist_v4_max,
            maps::BLOCK_V6 | maps::BLOCK_HOST_V6 => config.blocklist_v6_max,
            maps::ALLOW_V4 => config.allowlist_v4_max,
            maps::ALLOW_V6 => config.allowlist_v6_max,
            maps::FLOWS => config.flows_max,
            maps::EVENTS => events_bytes,
            _ => return None,
        })
    };
    pinned_maps()
        .map(|name| {
            let m = obj.maps.get(name).ok_or(DatapathError::MissingMap(name))?;
            let ringbuf =
                m.map_type() == aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32;
            Ok((
                name,
                MapShape {
                    map_type: m.map_type(),
                    key_size: if ringbuf { 0 } else { m.key_size() },
                    value_size: if ringbuf { 0 } else { m.value_size() },
                    max_entries: max(name).unwrap_or(m.max_entries()),
                    flags: m.map_flags(),
                },
            ))
        })
        .collect()
}

/// The shape of the map pinned at `path`, if there is one.
pub fn pinned_shape(path: &Path) -> Option<MapShape> {
    let info = MapInfo::from_pin(path).ok()?;
    Some(MapShape {
        map_type: info.map_type().ok()? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// The layout version pinned in `dir`, if any.
pub fn read_layout(dir: &Path) -> Option<u32> {
    let data = MapData::from_pin(dir.join(LAYOUT_PIN)).ok()?;
    let arr: Array<MapData, u32> = Array::try_from(Map::Array(data)).ok()?;
    arr.get(&0, 0).ok()
}

/// Pins [`LAYOUT_VERSION`] in `dir` (replacing an older one).
pub fn write_layout(dir: &Path) -> Result<(), DatapathError> {
    let err = |e: String| DatapathError::Pin {
        what: format!("cannot pin the layout version in {}: {e}", dir.display()),
        hint: String::new(),
    };
    let mut arr = Array::<MapData, u32>::create(1, 0).map_err(|e| err(e.to_string()))?;
    arr.set(0, LAYOUT_VERSION, 0)
        .map_err(|e| err(e.to_string()))?;
    let tmp = dir.join(format!("{LAYOUT_PIN}_new"));
    let _ = std::fs::remove_file(&tmp);
    arr.pin(&tmp).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, dir.join(LAYOUT_PIN)).map_err(|e| err(e.to_string()))
}

/// What a start decided for each map group.
#[derive(Debug, Default)]
pub struct PinPlan {
    /// Maps created anew at `NAME_new`, renamed over the old pins after the swap, with the reason.
    pub replaced: Vec<(&'static str, String)>,
    /// Maps reused from their pins.
    pub reused: Vec<&'static str>,
    /// Maps created for the first time (nothing was pinned).
    pub created: Vec<&'static str>,
}

impl PinPlan {
    pub fn path_for(&self, dir: &Path, name: &str) -> PathBuf {
        if self.replaced.iter().any(|(n, _)| *n == name) {
            dir.join(format!("{name}_new"))
        } else {
            dir.join(name)
        }
    }
}

/// Compares the pins in `dir` with what this build needs and decides, per group, reuse or rebuild.
pub fn plan(dir: &Path, shapes: &[(&'static str, MapShape)]) -> PinPlan {
    let layout = read_layout(dir);
    let mut plan = PinPlan::default();
    for group in GROUPS {
        let mut reason = None;
        let mut any_pinned = false;
        for name in group.iter() {
            let path = dir.join(name);
            let want = shapes.iter().find(|(n, _)| n == name).map(|(_, s)| *s);
            match (pinned_shape(&path), want) {
                (None, _) => {
                    if path.exists() {
                        reason.get_or_insert(format!("{name} is pinned but unreadable"));
                        any_pinned = true;
                    } else {
                        reason.get_or_insert(format!("{name} is not pinned"));
                    }
                }
                (Some(have), Some(want)) => {
                    any_pinned = true;
                    if have != want {
                        reason.get_or_insert(format!(
                            "{name}: pinned {have}, this build needs {want}"
                        ));
                    }
                }
                (Some(_), None) => {}
            }
        }
        if any_pinned && layout != Some(LAYOUT_VERSION) {
            reason = Some(match layout {
                Some(v) => format!("layout version {v} pinned, this build uses {LAYOUT_VERSION}"),
                None => "no layout version pinned".into(),
            });
        }
        for name in group.iter() {
            match (&reason, any_pinned) {
                (None, _) => plan.reused.push(name),
                (Some(_), false) => plan.created.push(name),
                (Some(r), true) => plan.replaced.push((name, r.clone())),
            }
        }
    }
    plan
}

/// Removes every pin in `dir` (the link first, so the interface is released at once), then the
/// directory and, when empty, its `netguard` parent.
pub fn remove_all(dir: &Path) -> Result<usize, DatapathError> {
    let mut removed = 0;
    let link = dir.join(LINK_PIN);
    if link.exists() {
        std::fs::remove_file(&link).map_err(|e| DatapathError::Pin {
            what: format!("cannot remove {}: {e}", link.display()),
            hint: String::new(),
        })?;
        removed += 1;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let gone = if e.path().is_dir() {
                std::fs::remove_dir(e.path())
            } else {
                std::fs::remove_file(e.path())
            };
            gone.map_err(|err| DatapathError::Pin {
                what: format!("cannot remove {}: {err}", e.path().display()),
                hint: String::new(),
            })?;
            removed += 1;
        }
    }
    let _ = std::fs::remove_dir(dir);
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(removed)
}
