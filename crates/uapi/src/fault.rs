//! Fault queues on `/dev/iommu` (the kernel's `drivers/iommu/iommufd/fault.c`):
//! IOMMU_FAULT_QUEUE_ALLOC and the queue's file.
//!
//! IOMMU_FAULT_QUEUE_ALLOC makes a fault object ([`uiommu_core::ObjType::Fault`]) and a file
//! for it ([`FaultQueueFile`], installed through [`crate::FdTable::install`], close-on-exec),
//! replying both ids. HWPTs are given the fault object with `IOMMU_HWPT_FAULT_ID_VALID`; page
//! faults of devices attached to them are read from the file and answered by writing to it:
//!
//! - `read(2)`: `count` must be a multiple of `sizeof(struct iommu_hwpt_pgfault)` (40), else
//!   ESPIPE (the kernel's answer); returns whole groups only, as many as fit; 0 when nothing is
//!   queued (it never blocks); EINVAL when the first group queued does not fit. Read into the
//!   reader's memory ([`FaultQueueFile::read_to`]), a group that cannot be written there stays
//!   queued (with those after it): EFAULT when it was the first, else the bytes before it.
//! - `write(2)`: `count` must be a multiple of `sizeof(struct iommu_hwpt_page_response)` (8),
//!   else ESPIPE; responses are taken in order, each with code SUCCESS or INVALID and the cookie
//!   of a group read and not answered yet (EINVAL otherwise); the first bad one stops the write,
//!   which returns the bytes of the responses taken, or the error when it was the first.
//! - The file holds the fault object (DESTROY is EBUSY while it is open) and its context
//!   (the kernel's file holds the iommufd file).

use crate::abi::*;
use crate::iommufd::IommufdFile;
use crate::ucmd::Ucmd;
use crate::{Caller, EngineFile, Errno};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use uiommu_core::error::errno::EOPNOTSUPP;
use uiommu_core::fault::{IopfRecord, PageResponse};
use uiommu_core::{Context, CtxId, ObjId};
use uiommu_platform::UserVa;
use zerocopy::{FromBytes, IntoBytes};

/// ESPIPE: a read or write whose size is not a whole number of records.
const ESPIPE: Errno = 29;
/// EFAULT: the reader's buffer cannot be written.
const EFAULT: Errno = 14;
/// EBADFD: the queue behind the file is gone (its creation's reply failed).
const EBADFD: Errno = 77;

/// Size of one fault record read.
pub const PGFAULT_SIZE: usize = size_of::<IommuHwptPgfault>();
/// Size of one response written.
pub const RESPONSE_SIZE: usize = size_of::<IommuHwptPageResponse>();

/// The file of a fault queue (`[iommufd-pgfault]`).
pub struct FaultQueueFile {
    ctx: Context,
    fault: ObjId,
    /// The fault object was destroyed already (the IOMMU_FAULT_QUEUE_ALLOC reply failed).
    dead: AtomicBool,
}

impl std::fmt::Debug for FaultQueueFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultQueueFile")
            .field("ctx", &self.ctx)
            .field("fault", &self.fault)
            .finish()
    }
}

impl FaultQueueFile {
    /// The fault object's id in its context.
    pub fn fault_id(&self) -> ObjId {
        self.fault
    }

    /// The security context the queue belongs to.
    pub fn context_id(&self) -> CtxId {
        self.ctx.id()
    }

    fn live(&self) -> Result<(), Errno> {
        if self.dead.load(Ordering::SeqCst) {
            Err(EBADFD)
        } else {
            Ok(())
        }
    }

    /// Destroy the fault object (once): for a queue that could not be handed out.
    fn abort(&self) {
        if !self.dead.swap(true, Ordering::SeqCst) && self.ctx.fault_abort(self.fault).is_err() {
            // A HWPT took it meanwhile: only let go of the file's hold.
            let _ = self.ctx.fault_file_release(self.fault);
        }
    }
}

impl FaultQueueFile {
    /// `read(2)` of up to `count` bytes into the caller's memory at `va`, as the kernel's
    /// `iommufd_fault_fops_read` copies: group by group, and a group whose records cannot be
    /// written goes back to the front of the queue, unanswered, with the groups after it. The
    /// bytes of the groups written, or EFAULT when the first could not be.
    pub fn read_to(&self, caller: &Caller<'_>, va: u64, count: usize) -> Result<usize, Errno> {
        if !count.is_multiple_of(PGFAULT_SIZE) {
            return Err(ESPIPE);
        }
        self.live()?;
        let records = self
            .ctx
            .fault_read(self.fault, count / PGFAULT_SIZE)
            .map_err(|e| e.errno())?;
        // Whole groups, in the order read: consecutive records share the group's cookie.
        let mut groups: Vec<&[IopfRecord]> = Vec::new();
        let mut start = 0;
        for i in 1..=records.len() {
            if i == records.len() || records[i].cookie != records[start].cookie {
                groups.push(&records[start..i]);
                start = i;
            }
        }
        let mut done = 0usize;
        for (k, g) in groups.iter().enumerate() {
            let bytes: Vec<u8> = g
                .iter()
                .flat_map(|r| pgfault(r).as_bytes().to_vec())
                .collect();
            if caller.mem.write(UserVa(va + done as u64), &bytes).is_err() {
                for g in groups[k..].iter().rev() {
                    let _ = self.ctx.fault_unread(self.fault, g[0].cookie);
                }
                return if done == 0 { Err(EFAULT) } else { Ok(done) };
            }
            done += bytes.len();
        }
        Ok(done)
    }

    /// Whether a read would find a fault queued (`poll(2)`'s `EPOLLIN`); a dead queue has none.
    pub fn readable(&self) -> bool {
        !self.dead.load(Ordering::SeqCst)
            && self
                .ctx
                .fault_pending(self.fault)
                .is_ok_and(|(queued, _)| queued > 0)
    }
}

impl Drop for FaultQueueFile {
    fn drop(&mut self) {
        if !self.dead.load(Ordering::SeqCst) {
            let _ = self.ctx.fault_file_release(self.fault);
        }
    }
}

fn pgfault(r: &IopfRecord) -> IommuHwptPgfault {
    IommuHwptPgfault {
        flags: r.flags,
        dev_id: r.dev_id.0,
        pasid: r.pasid,
        grpid: r.grpid,
        perm: r.perm,
        reserved: 0,
        addr: r.addr,
        length: r.length,
        cookie: r.cookie,
    }
}

impl EngineFile for FaultQueueFile {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn read(&self, _caller: &Caller<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
        if !buf.len().is_multiple_of(PGFAULT_SIZE) {
            return Err(ESPIPE);
        }
        self.live()?;
        let records = self
            .ctx
            .fault_read(self.fault, buf.len() / PGFAULT_SIZE)
            .map_err(|e| e.errno())?;
        let mut done = 0;
        for (r, out) in records.iter().zip(buf.chunks_exact_mut(PGFAULT_SIZE)) {
            out.copy_from_slice(pgfault(r).as_bytes());
            done += PGFAULT_SIZE;
        }
        Ok(done)
    }

    fn write(&self, _caller: &Caller<'_>, data: &[u8]) -> Result<usize, Errno> {
        if !data.len().is_multiple_of(RESPONSE_SIZE) {
            return Err(ESPIPE);
        }
        self.live()?;
        let responses: Vec<PageResponse> = data
            .chunks_exact(RESPONSE_SIZE)
            .filter_map(|b| IommuHwptPageResponse::read_from_bytes(b).ok())
            .map(|r| PageResponse {
                cookie: r.cookie,
                code: r.code,
            })
            .collect();
        let n = self
            .ctx
            .fault_respond(self.fault, &responses)
            .map_err(|e| e.errno())?;
        Ok(n * RESPONSE_SIZE)
    }
}

/// IOMMU_FAULT_QUEUE_ALLOC: EOPNOTSUPP for any flag; the fault object and its file
/// (close-on-exec) are made and both ids replied. The reply is checked writable before the
/// descriptor exists; should it still fail, the fault object is destroyed and the descriptor
/// taken back ([`FdTable::uninstall`]; a front-end that cannot leaves it naming a dead file,
/// EBADFD).
pub(crate) fn fault_alloc(f: &IommufdFile, c: &Caller<'_>, u: &Ucmd<'_>) -> Result<(), Errno> {
    let mut cmd: IommuFaultAlloc = u.cmd()?;
    if cmd.flags != 0 {
        return Err(EOPNOTSUPP);
    }
    let ctx = f.context();
    let fault = ctx.fault_alloc().map_err(|e| e.errno())?;
    let file = Arc::new(FaultQueueFile {
        ctx: ctx.clone(),
        fault,
        dead: AtomicBool::new(false),
    });
    // From here on dropping `file` lets go of the queue (it stays until DESTROY); on an
    // error the queue is destroyed too, as the kernel aborts the object.
    cmd.out_fault_id = fault.0;
    if let Err(e) = u.respond(&cmd) {
        file.abort();
        return Err(e);
    }
    let fd = match c.install(file.clone(), true) {
        Ok(fd) => fd,
        Err(e) => {
            file.abort();
            return Err(e);
        }
    };
    cmd.out_fault_fd = fd as u32;
    if let Err(e) = u.respond(&cmd) {
        file.abort();
        c.fds.uninstall(fd);
        return Err(e);
    }
    Ok(())
}
