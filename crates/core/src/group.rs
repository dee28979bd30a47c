//! The IOMMU layer: group DMA ownership, the driver guard and group-wide domains.
//!
//! Ownership is per IOMMU group, as in the kernel's `iommu.c`:
//! - `owner_cnt` counts the group's users: devices bound to a DMA-doing kernel driver (which use
//!   the default domain, owner `None`), or devices a security context claimed (owner = that
//!   context).
//! - A context claims a group only when nothing else uses it or it already owns it (EPERM
//!   otherwise: another context, or a kernel DMA driver, uses the group); the first claim moves
//!   the group from its default domain into the blocking domain (EBUSY if the group is not in its
//!   default domain then).
//! - A DMA driver may bind to a device only while the group is not user-owned and sits in its
//!   default domain (EBUSY otherwise): the continuous viability rule.
//! - The last release returns the group to its default (identity) domain.
//!
//! A group's domain is applied to every requester id of every device in it at once: the
//! hardware cannot do otherwise, which is why attach is group-wide.

use crate::error::{Error, Result};
use crate::object::ObjId;
use std::collections::HashMap;
use uiommu_platform::drivers::Driver;
use uiommu_platform::hw::{DomainId, DomainSpec};
use uiommu_platform::topology::{DeviceId, GroupId};
use uiommu_platform::Platform;

/// Identifies a security context within an engine.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtxId(pub u64);

/// Ownership and domain state of one IOMMU group.
#[derive(Clone, Debug, Default)]
pub(crate) struct GroupState {
    /// The context that owns the group's DMA (None: the kernel, i.e. no user owner).
    pub owner: Option<CtxId>,
    /// Users of the group: claimed devices plus devices bound to DMA drivers.
    pub owner_cnt: u32,
    /// The HWPT the owner's devices are attached to (the kernel's `iommufd_group::hwpt`).
    pub hwpt: Option<ObjId>,
    /// The owner's device objects attached to `hwpt` (the kernel's `device_list`).
    pub attached: Vec<ObjId>,
    /// The domain the hardware uses for the group now.
    pub domain: Option<DomainId>,
}

/// All groups' ownership, plus the shared blocking and default domains.
#[derive(Debug)]
pub(crate) struct Groups {
    groups: HashMap<GroupId, GroupState>,
    /// The blocking domain every claimed-but-unattached group sits in.
    pub blocking: DomainId,
    /// The default (identity) domain of every unowned group.
    pub identity: DomainId,
}

impl Groups {
    /// Set up every group of the platform in its default domain, counting boot DMA drivers.
    pub fn new(platform: &mut Platform) -> Result<Groups> {
        let blocking = platform
            .iommu
            .alloc_domain(DomainSpec::Blocking)
            .map_err(|_| Error::NoMemory("blocking domain"))?;
        let identity = platform
            .iommu
            .alloc_domain(DomainSpec::Identity)
            .map_err(|_| Error::NoMemory("identity domain"))?;
        let mut g = Groups {
            groups: HashMap::new(),
            blocking,
            identity,
        };
        let ids: Vec<GroupId> = platform.topology.groups().map(|g| g.id).collect();
        for gid in ids {
            g.ensure(platform, gid);
        }
        Ok(g)
    }

    /// Make sure a group (possibly hot-added) has state; new groups start in the default
    /// domain with one user per device bound to a DMA driver.
    pub fn ensure(&mut self, platform: &mut Platform, gid: GroupId) {
        if self.groups.contains_key(&gid) {
            return;
        }
        let mut st = GroupState::default();
        if let Some(group) = platform.topology.group(gid) {
            for dev in &group.devices {
                if !platform.drivers.driver(*dev).driver_managed_dma() {
                    st.owner_cnt += 1;
                }
            }
        }
        self.groups.insert(gid, st);
        self.set_domain(platform, gid, self.identity);
    }

    /// Forget a hot-removed group.
    pub fn forget(&mut self, gid: GroupId) {
        self.groups.remove(&gid);
    }

    /// A group's state.
    pub fn get(&self, gid: GroupId) -> Option<&GroupState> {
        self.groups.get(&gid)
    }

    /// A group's state, mutably.
    pub fn get_mut(&mut self, gid: GroupId) -> Option<&mut GroupState> {
        self.groups.get_mut(&gid)
    }

    /// All groups.
    pub fn iter(&self) -> impl Iterator<Item = (&GroupId, &GroupState)> {
        self.groups.iter()
    }

    /// Point the hardware context entry of every requester id in the group at `domain`.
    pub fn set_domain(&mut self, platform: &mut Platform, gid: GroupId, domain: DomainId) {
        let rids: Vec<_> = match platform.topology.group(gid) {
            Some(group) => group
                .devices
                .iter()
                .filter_map(|d| platform.topology.device(*d))
                .flat_map(|d| d.rids.iter().copied())
                .collect(),
            None => Vec::new(),
        };
        for rid in rids {
            // The domain exists (the caller holds it), so this cannot fail.
            let _ = platform.iommu.set_context(rid, Some(domain));
        }
        if let Some(st) = self.groups.get_mut(&gid) {
            st.domain = Some(domain);
        }
    }

    /// A context claims DMA ownership of the group of one of its devices.
    pub fn claim(&mut self, platform: &mut Platform, gid: GroupId, ctx: CtxId) -> Result<()> {
        self.ensure(platform, gid);
        let identity = self.identity;
        let blocking = self.blocking;
        let st = self
            .groups
            .get_mut(&gid)
            .ok_or(Error::NoDevice("no IOMMU group"))?;
        if st.owner_cnt > 0 {
            if st.owner != Some(ctx) {
                return Err(Error::Permission("the group is used by another owner"));
            }
            st.owner_cnt += 1;
            return Ok(());
        }
        if st.domain.is_some() && st.domain != Some(identity) {
            return Err(Error::Busy("the group is not in its default domain"));
        }
        st.owner = Some(ctx);
        st.owner_cnt = 1;
        self.set_domain(platform, gid, blocking);
        Ok(())
    }

    /// Drop one claim of `ctx` on the group; the last one returns it to the default domain.
    pub fn release(&mut self, platform: &mut Platform, gid: GroupId) {
        let identity = self.identity;
        let Some(st) = self.groups.get_mut(&gid) else {
            return;
        };
        debug_assert!(st.owner.is_some() && st.owner_cnt > 0);
        st.owner_cnt = st.owner_cnt.saturating_sub(1);
        if st.owner_cnt == 0 {
            st.owner = None;
            st.hwpt = None;
            st.attached.clear();
            self.set_domain(platform, gid, identity);
        }
    }

    /// Bind a driver to a device, with the viability guard: a DMA-doing driver is refused with
    /// EBUSY in a group that a context owns (or that is not in its default domain); any driver
    /// is refused with EBUSY on a device that already has one.
    pub fn driver_bind(
        &mut self,
        platform: &mut Platform,
        dev: DeviceId,
        driver: Driver,
    ) -> Result<()> {
        let gid = platform
            .topology
            .device(dev)
            .ok_or(Error::NoDevice("no such device"))?
            .group;
        if *platform.drivers.driver(dev) != Driver::Unbound {
            return Err(Error::Busy("the device already has a driver"));
        }
        if driver == Driver::Unbound {
            return Ok(());
        }
        self.ensure(platform, gid);
        let identity = self.identity;
        let st = self
            .groups
            .get_mut(&gid)
            .ok_or(Error::NoDevice("no IOMMU group"))?;
        if !driver.driver_managed_dma() {
            if st.owner_cnt > 0 && (st.owner.is_some() || st.domain != Some(identity)) {
                return Err(Error::Busy("the IOMMU group is owned by a user"));
            }
            st.owner_cnt += 1;
        }
        platform.drivers.set(dev, driver);
        Ok(())
    }

    /// Unbind a device's driver. `in_use` says whether a context holds the device (a VFIO
    /// device that is bound cannot lose its driver: EBUSY).
    pub fn driver_unbind(
        &mut self,
        platform: &mut Platform,
        dev: DeviceId,
        in_use: bool,
    ) -> Result<()> {
        let gid = platform
            .topology
            .device(dev)
            .ok_or(Error::NoDevice("no such device"))?
            .group;
        let driver = platform.drivers.driver(dev).clone();
        if driver == Driver::Unbound {
            return Err(Error::NoDevice("the device has no driver"));
        }
        if in_use {
            return Err(Error::Busy("the device is bound to a security context"));
        }
        if !driver.driver_managed_dma() {
            if let Some(st) = self.groups.get_mut(&gid) {
                st.owner_cnt = st.owner_cnt.saturating_sub(1);
            }
        }
        platform.drivers.set(dev, Driver::Unbound);
        Ok(())
    }
}
