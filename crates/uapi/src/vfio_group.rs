//! The legacy VFIO path: the container `/dev/vfio/vfio` and the group files
//! `/dev/vfio/<group>`, as Linux 6.12 serves them with iommufd underneath
//! (`CONFIG_IOMMUFD_VFIO_CONTAINER`: `drivers/vfio/group.c` on top of `iommufd/vfio_compat.c`).
//!
//! - **The container** is an iommufd: opening `/dev/vfio/vfio` opens an ordinary security
//!   context ([`open_container`] returns an [`IommufdFile`]) whose pinned pages are charged to
//!   the process, as VFIO type1 charges them (`IOPT_PAGES_ACCOUNT_MM`). Its VFIO ioctls are the
//!   type1 compatibility ioctls of [`crate::vfio_compat`]; the iommufd commands work on it too.
//! - **A group file** ([`VfioGroupFile`]) exists for every IOMMU group with a function bound to
//!   `vfio-pci` ([`vfio_groups`]); it can be open once at a time (EBUSY). Its ioctls:
//!
//! | ioctl | what happens | errno |
//! |---|---|---|
//! | `VFIO_GROUP_GET_STATUS` | `VIABLE | CONTAINER_SET` with a container; otherwise `VIABLE` when nothing claims the group's DMA (no DMA-doing kernel driver in the group, no other context owning it) | `EFAULT`, `EINVAL` argsz < 8 |
//! | `VFIO_GROUP_SET_CONTAINER` | the `int` fd at `arg` must be an iommufd (a container or `/dev/iommu`); its compatibility IOAS is created if it has none | `EFAULT`; `EBADF` fd not open; `EINVAL` a container is already set; `EBADFD` not an iommufd |
//! | `VFIO_GROUP_UNSET_CONTAINER` | forget the container (open device files keep their binding) | `EINVAL` none set |
//! | `VFIO_GROUP_GET_DEVICE_FD` | `arg` is a device name (`"0000:01:00.0"`, optionally followed by options); returns a new `O_CLOEXEC` fd of a [`VfioDeviceFile`] bound to the container's context and attached to its compatibility IOAS. A device already open through the group shares that open (the kernel's `open_count`) | `EFAULT`; `EINVAL` no NUL within 4096 bytes or a bad option; `ENODEV` no such vfio-pci device in the group; `EINVAL` no container; then [`VfioDeviceFile::open_group`]'s errno; the fd table's errno |
//! | anything else | | `ENOTTY` |

use crate::iommufd::IommufdFile;
use crate::vfio_abi::*;
use crate::vfio_device::VfioDeviceFile;
use crate::{Caller, EngineFile, Errno};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use uiommu_core::error::errno::{EBUSY, EFAULT, EINVAL, ENODEV, ENOTTY};
use uiommu_core::{Context, Engine};
use uiommu_platform::drivers::Driver;
use uiommu_platform::memory::{SpaceId, UserMemory};
use uiommu_platform::topology::{DeviceId, GroupId};
use uiommu_platform::{UserVa, PAGE_SIZE};
use zerocopy::IntoBytes;

/// `EBADF` (not in the core's errno list).
const EBADF: Errno = 9;
/// What `FdTable::iommufd` answers for an open fd that is not an iommufd.
const EBADFD: Errno = 77;

/// Longest device name `VFIO_GROUP_GET_DEVICE_FD` reads (`strndup_user(arg, PAGE_SIZE)`),
/// including its NUL.
pub const MAX_DEVICE_NAME: u64 = PAGE_SIZE;

/// `open("/dev/vfio/vfio")`: a VFIO container, which with iommufd underneath is an iommufd
/// whose pinned pages are charged to the process (RLIMIT_MEMLOCK of the process, as VFIO type1
/// charges them).
pub fn open_container(engine: &Arc<Engine>, space: SpaceId) -> Result<IommufdFile, Errno> {
    let f = IommufdFile::open(engine, space)?;
    f.context()
        .set_vfio_container_accounting()
        .map_err(|e| e.errno())?;
    Ok(f)
}

/// The groups that have a `/dev/vfio/<group>` node: those with at least one function bound to
/// `vfio-pci`, ascending.
pub fn vfio_groups(engine: &Engine) -> Vec<GroupId> {
    engine.with_platform(|p| {
        p.topology
            .devices()
            .filter(|d| *p.drivers.driver(d.id) == Driver::VfioPci)
            .map(|d| d.group)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    })
}

/// Groups open now, per engine (by the engine's address: a group file holds its engine, so
/// the address is not reused while an entry exists).
static OPEN_GROUPS: Mutex<BTreeSet<(usize, u32)>> = Mutex::new(BTreeSet::new());

fn open_groups() -> MutexGuard<'static, BTreeSet<(usize, u32)>> {
    OPEN_GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shared part of a group file, which its device files keep alive (in the kernel a device
/// file holds a reference on its group file, so the group is not released, and cannot be
/// opened again, while one of its devices is open).
struct GroupInner {
    engine: Arc<Engine>,
    group: GroupId,
    state: Mutex<GroupState>,
}

#[derive(Default)]
struct GroupState {
    /// The container's (iommufd's) context, once SET_CONTAINER succeeded.
    iommufd: Option<Context>,
    /// Device files opened through the group that may still be open.
    devices: BTreeMap<DeviceId, Weak<VfioDeviceFile>>,
}

impl Drop for GroupInner {
    fn drop(&mut self) {
        let key = (Arc::as_ptr(&self.engine) as usize, self.group.0);
        open_groups().remove(&key);
    }
}

impl GroupInner {
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An open `/dev/vfio/<group>`.
pub struct VfioGroupFile {
    inner: Arc<GroupInner>,
}

impl std::fmt::Debug for VfioGroupFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioGroupFile")
            .field("group", &self.inner.group)
            .finish()
    }
}

impl VfioGroupFile {
    /// Open the group file of `group`: ENODEV when the group has no function bound to
    /// `vfio-pci` (no such node), EBUSY while it is open already (in this engine).
    pub fn open(engine: &Arc<Engine>, group: GroupId) -> Result<VfioGroupFile, Errno> {
        if !vfio_groups(engine).contains(&group) {
            return Err(ENODEV);
        }
        let key = (Arc::as_ptr(engine) as usize, group.0);
        if !open_groups().insert(key) {
            return Err(EBUSY);
        }
        Ok(VfioGroupFile {
            inner: Arc::new(GroupInner {
                engine: engine.clone(),
                group,
                state: Mutex::new(GroupState::default()),
            }),
        })
    }

    /// The IOMMU group of the file.
    pub fn group(&self) -> GroupId {
        self.inner.group
    }

    /// An ioctl on the group file (`vfio_group_fops_unl_ioctl`). `request` is truncated to 32
    /// bits; `arg` is a pointer into `caller.mem`. Returns 0, or the new fd of GET_DEVICE_FD.
    pub fn ioctl(&self, caller: &Caller<'_>, request: u64, arg: u64) -> Result<i64, Errno> {
        match request as u32 {
            VFIO_GROUP_GET_DEVICE_FD => self.get_device_fd(caller, arg),
            VFIO_GROUP_GET_STATUS => self.get_status(caller.mem, arg).map(|()| 0),
            VFIO_GROUP_SET_CONTAINER => self.set_container(caller, arg).map(|()| 0),
            VFIO_GROUP_UNSET_CONTAINER => self.unset_container().map(|()| 0),
            _ => Err(ENOTTY),
        }
    }

    /// VFIO_GROUP_GET_STATUS.
    fn get_status(&self, mem: &dyn UserMemory, arg: u64) -> Result<(), Errno> {
        let mut status = VfioGroupStatus::default();
        read(mem, arg, status.as_mut_bytes())?;
        if (status.argsz as usize) < size_of::<VfioGroupStatus>() {
            return Err(EINVAL);
        }
        status.flags = 0;
        if self.inner.lock().iommufd.is_some() {
            status.flags = VFIO_GROUP_FLAGS_CONTAINER_SET | VFIO_GROUP_FLAGS_VIABLE;
        } else {
            let claimed = self
                .inner
                .engine
                .group_status(self.inner.group)
                .is_none_or(|s| s.users != 0);
            if !claimed {
                status.flags = VFIO_GROUP_FLAGS_VIABLE;
            }
        }
        write(mem, arg, status.as_bytes())
    }

    /// VFIO_GROUP_SET_CONTAINER.
    fn set_container(&self, caller: &Caller<'_>, arg: u64) -> Result<(), Errno> {
        let mut fd = [0u8; 4];
        read(caller.mem, arg, &mut fd)?;
        let fd = i32::from_le_bytes(fd);
        let looked_up = caller.fds.iommufd(fd);
        if looked_up.as_ref().err() == Some(&EBADF) {
            return Err(EBADF);
        }
        let mut st = self.inner.lock();
        if st.iommufd.is_some() {
            return Err(EINVAL);
        }
        let ctx = looked_up.map_err(|_| EBADFD)?;
        ctx.vfio_compat_ioas_create().map_err(|e| e.errno())?;
        st.iommufd = Some(ctx);
        Ok(())
    }

    /// VFIO_GROUP_UNSET_CONTAINER.
    fn unset_container(&self) -> Result<(), Errno> {
        let mut st = self.inner.lock();
        if st.iommufd.take().is_none() {
            return Err(EINVAL);
        }
        Ok(())
    }

    /// VFIO_GROUP_GET_DEVICE_FD.
    fn get_device_fd(&self, caller: &Caller<'_>, arg: u64) -> Result<i64, Errno> {
        let name = read_cstr(caller.mem, arg)?;
        let dev = self.find_device(&name)?;
        let mut st = self.inner.lock();
        let Some(ctx) = st.iommufd.clone() else {
            return Err(EINVAL);
        };
        st.devices.retain(|_, w| w.strong_count() > 0);
        let file = match st.devices.get(&dev).and_then(Weak::upgrade) {
            Some(open) => open,
            None => {
                let holder: Arc<dyn std::any::Any + Send + Sync> = self.inner.clone();
                let f = Arc::new(VfioDeviceFile::open_group(
                    &self.inner.engine,
                    dev,
                    ctx,
                    holder,
                )?);
                st.devices.insert(dev, Arc::downgrade(&f));
                f
            }
        };
        drop(st);
        let fd = caller.install(file, true)?;
        Ok(i64::from(fd))
    }

    /// The vfio-pci function of the group that `name` names (`vfio_pci_core_match`): the PCI
    /// name, then nothing or a space and options. The only option is `vf_token=<uuid>`, which
    /// no function here accepts (no SR-IOV): EINVAL. ENODEV when nothing matches.
    fn find_device(&self, name: &[u8]) -> Result<DeviceId, Errno> {
        let candidates: Vec<(DeviceId, String)> = self.inner.engine.with_platform(|p| {
            p.topology
                .devices()
                .filter(|d| {
                    d.group == self.inner.group && *p.drivers.driver(d.id) == Driver::VfioPci
                })
                .map(|d| (d.id, d.bdf.to_string()))
                .collect()
        });
        for (dev, pci) in candidates {
            let Some(rest) = name.strip_prefix(pci.as_bytes()) else {
                continue;
            };
            if rest.is_empty() {
                return Ok(dev);
            }
            if rest[0] != b' ' {
                continue;
            }
            let opts = rest.split(|&b| b == b' ').filter(|o| !o.is_empty());
            let mut token = false;
            for o in opts {
                match o.strip_prefix(b"vf_token=") {
                    Some(uuid) if !token && uuid_ok(uuid) => token = true,
                    _ => return Err(EINVAL),
                }
            }
            // A VF token given to a function that is neither a PF nor a VF.
            return if token { Err(EINVAL) } else { Ok(dev) };
        }
        Err(ENODEV)
    }
}

/// Whether `s` is a UUID in its 36-character text form.
fn uuid_ok(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Read `buf.len()` bytes at `addr` (EFAULT).
fn read(mem: &dyn UserMemory, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    addr.checked_add(buf.len() as u64).ok_or(EFAULT)?;
    mem.read(UserVa(addr), buf).map_err(|_| EFAULT)
}

/// Write `data` at `addr` (EFAULT).
fn write(mem: &dyn UserMemory, addr: u64, data: &[u8]) -> Result<(), Errno> {
    addr.checked_add(data.len() as u64).ok_or(EFAULT)?;
    mem.write(UserVa(addr), data).map_err(|_| EFAULT)
}

/// `strndup_user(arg, PAGE_SIZE)`: the string at `addr` without its NUL, read page by page
/// (EFAULT on a fault before the NUL); EINVAL when there is no NUL within
/// [`MAX_DEVICE_NAME`] bytes.
fn read_cstr(mem: &dyn UserMemory, addr: u64) -> Result<Vec<u8>, Errno> {
    let mut out = Vec::new();
    let mut at = addr;
    while (out.len() as u64) < MAX_DEVICE_NAME {
        let to_page_end = PAGE_SIZE - (at & (PAGE_SIZE - 1));
        let n = to_page_end.min(MAX_DEVICE_NAME - out.len() as u64) as usize;
        let mut chunk = vec![0u8; n];
        read(mem, at, &mut chunk)?;
        if let Some(nul) = chunk.iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..nul]);
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
        at = at.checked_add(n as u64).ok_or(EFAULT)?;
    }
    Err(EINVAL)
}

/// A device file opened through a group is an engine-made file (installed with
/// [`crate::FdTable::install`]); front-ends downcast it to serve its ioctls and regions.
impl EngineFile for VfioDeviceFile {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_checked_by_shape() {
        assert!(uuid_ok(b"bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3"));
        assert!(!uuid_ok(b"bd8d9d2b-5a5f-4f5a-a211-f591514ba1f"));
        assert!(!uuid_ok(b"bd8d9d2bx5a5f-4f5a-a211-f591514ba1f3"));
        assert!(!uuid_ok(b"gd8d9d2b-5a5f-4f5a-a211-f591514ba1f3"));
    }

    #[test]
    fn groups_with_vfio_devices_have_nodes() {
        let e = Engine::builtin();
        let groups = vfio_groups(&e);
        assert_eq!(
            groups,
            vec![GroupId(5), GroupId(6), GroupId(7), GroupId(14)]
        );
        assert_eq!(VfioGroupFile::open(&e, GroupId(0)).unwrap_err(), ENODEV);
        let g = VfioGroupFile::open(&e, GroupId(5)).unwrap();
        assert_eq!(VfioGroupFile::open(&e, GroupId(5)).unwrap_err(), EBUSY);
        // Another engine has its own groups.
        let e2 = Engine::builtin();
        drop(VfioGroupFile::open(&e2, GroupId(5)).unwrap());
        drop(g);
        drop(VfioGroupFile::open(&e, GroupId(5)).unwrap());
    }
}
