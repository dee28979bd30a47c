//! The per-context object table.
//!
//! Every object a context creates (IOAS, HWPT, device, access) gets an id from 1 upward; the
//! lowest free id is reused, as the kernel's allocating xarray does. Creation is two-phase:
//! [`ObjectTable::reserve`] takes an id that lookups do not see yet, [`ObjectTable::finalize`]
//! makes the object visible, [`ObjectTable::abort`] gives the id back. An object counts the
//! other objects (and outside holders) that depend on it in `users`; DESTROY is refused with
//! EBUSY while that count is non-zero.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

/// An object id in a context (as userspace sees it).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjId(pub u32);

/// The type of an object.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ObjType {
    /// An I/O address space.
    Ioas,
    /// A paging hardware page table.
    HwptPaging,
    /// A nested hardware page table.
    HwptNested,
    /// A bound device.
    Device,
    /// An access of an emulated device.
    Access,
    /// The kernel selftest's mock-device object (`IOMMUFD_OBJ_SELFTEST`): destroying it unplugs
    /// its mock device.
    Selftest,
    /// A fault queue (`IOMMUFD_OBJ_FAULT`): page faults of devices on the HWPTs that use it.
    Fault,
}

#[derive(Debug)]
enum Slot<T> {
    Reserved,
    Live { obj: T, users: u32 },
}

/// Objects of one context, by id.
#[derive(Debug)]
pub(crate) struct ObjectTable<T> {
    slots: BTreeMap<u32, Slot<T>>,
    free: BTreeSet<u32>,
    next: u32,
}

impl<T> Default for ObjectTable<T> {
    fn default() -> Self {
        ObjectTable {
            slots: BTreeMap::new(),
            free: BTreeSet::new(),
            next: 1,
        }
    }
}

impl<T> ObjectTable<T> {
    /// Take the lowest free id; the object is invisible until finalized.
    pub fn reserve(&mut self) -> Result<ObjId> {
        crate::error::alloc_site("object")?;
        let id = match self.free.pop_first() {
            Some(id) => id,
            None => {
                if self.next == u32::MAX {
                    return Err(Error::NoSpace("object ids exhausted"));
                }
                let id = self.next;
                self.next += 1;
                id
            }
        };
        self.slots.insert(id, Slot::Reserved);
        Ok(ObjId(id))
    }

    /// Make a reserved id's object visible.
    pub fn finalize(&mut self, id: ObjId, obj: T) {
        self.slots.insert(id.0, Slot::Live { obj, users: 0 });
    }

    /// Give back a reserved id.
    pub fn abort(&mut self, id: ObjId) {
        if matches!(self.slots.get(&id.0), Some(Slot::Reserved)) {
            self.release_id(id.0);
        }
    }

    /// Reserve and finalize in one step.
    pub fn insert(&mut self, obj: T) -> Result<ObjId> {
        let id = self.reserve()?;
        self.finalize(id, obj);
        Ok(id)
    }

    fn release_id(&mut self, id: u32) {
        self.slots.remove(&id);
        if id + 1 == self.next {
            self.next = id;
            // Shrink `next` past trailing free ids so the free set stays small.
            while self.next > 1 && self.free.remove(&(self.next - 1)) {
                self.next -= 1;
            }
        } else {
            self.free.insert(id);
        }
    }

    /// A visible object.
    pub fn get(&self, id: ObjId) -> Result<&T> {
        match self.slots.get(&id.0) {
            Some(Slot::Live { obj, .. }) => Ok(obj),
            _ => Err(Error::NoObject(id.0)),
        }
    }

    /// A visible object, mutably.
    pub fn get_mut(&mut self, id: ObjId) -> Result<&mut T> {
        match self.slots.get_mut(&id.0) {
            Some(Slot::Live { obj, .. }) => Ok(obj),
            _ => Err(Error::NoObject(id.0)),
        }
    }

    /// How many holders depend on the object.
    pub fn users(&self, id: ObjId) -> u32 {
        match self.slots.get(&id.0) {
            Some(Slot::Live { users, .. }) => *users,
            _ => 0,
        }
    }

    /// One more holder.
    pub fn get_user(&mut self, id: ObjId) {
        if let Some(Slot::Live { users, .. }) = self.slots.get_mut(&id.0) {
            *users += 1;
        }
    }

    /// One holder fewer.
    pub fn put_user(&mut self, id: ObjId) {
        if let Some(Slot::Live { users, .. }) = self.slots.get_mut(&id.0) {
            debug_assert!(*users > 0, "put_user underflow on object {}", id.0);
            *users = users.saturating_sub(1);
        }
    }

    /// Remove a visible object if nothing depends on it (EBUSY otherwise, ENOENT if absent).
    pub fn remove(&mut self, id: ObjId) -> Result<T> {
        match self.slots.get(&id.0) {
            Some(Slot::Live { users: 0, .. }) => {}
            Some(Slot::Live { .. }) => return Err(Error::Busy("object is in use")),
            _ => return Err(Error::NoObject(id.0)),
        }
        let Some(Slot::Live { obj, .. }) = self.slots.remove(&id.0) else {
            return Err(Error::NoObject(id.0));
        };
        self.slots.insert(id.0, Slot::Reserved);
        self.release_id(id.0);
        Ok(obj)
    }

    /// Ids of visible objects, ascending.
    pub fn ids(&self) -> Vec<ObjId> {
        self.slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Live { .. }))
            .map(|(id, _)| ObjId(*id))
            .collect()
    }

    /// Visible objects, ascending by id.
    pub fn iter(&self) -> impl Iterator<Item = (ObjId, &T)> {
        self.slots.iter().filter_map(|(id, s)| match s {
            Slot::Live { obj, .. } => Some((ObjId(*id), obj)),
            Slot::Reserved => None,
        })
    }

    /// Number of visible objects.
    pub fn len(&self) -> usize {
        self.slots
            .values()
            .filter(|s| matches!(s, Slot::Live { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_and_lowest_free_is_reused() {
        let mut t = ObjectTable::<&str>::default();
        assert_eq!(t.insert("a").unwrap(), ObjId(1));
        assert_eq!(t.insert("b").unwrap(), ObjId(2));
        assert_eq!(t.insert("c").unwrap(), ObjId(3));
        t.remove(ObjId(1)).unwrap();
        t.remove(ObjId(2)).unwrap();
        assert_eq!(t.insert("d").unwrap(), ObjId(1));
        assert_eq!(t.insert("e").unwrap(), ObjId(2));
        assert_eq!(t.insert("f").unwrap(), ObjId(4));
    }

    #[test]
    fn reserved_objects_are_invisible_until_finalized() {
        let mut t = ObjectTable::<u8>::default();
        let id = t.reserve().unwrap();
        assert_eq!(t.get(id), Err(Error::NoObject(1)));
        assert_eq!(t.remove(id).unwrap_err().errno(), 2);
        t.finalize(id, 7);
        assert_eq!(t.get(id), Ok(&7));
    }

    #[test]
    fn aborted_reservation_returns_the_id() {
        let mut t = ObjectTable::<u8>::default();
        let a = t.reserve().unwrap();
        t.abort(a);
        assert_eq!(t.insert(1).unwrap(), ObjId(1));
    }

    #[test]
    fn destroy_is_ebusy_while_in_use() {
        let mut t = ObjectTable::<u8>::default();
        let id = t.insert(1).unwrap();
        t.get_user(id);
        assert_eq!(t.remove(id).unwrap_err().errno(), 16);
        t.put_user(id);
        assert_eq!(t.remove(id), Ok(1));
        assert_eq!(t.remove(id).unwrap_err().errno(), 2);
    }
}
