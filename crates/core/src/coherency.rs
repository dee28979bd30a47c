//! The revocable coherency right (seed 003).
//!
//! A hypervisor must let a guest execute WBINVD only while a device that can do non-coherent
//! (no-snoop) DMA is attached in the guest's security context. The right is derived from the
//! attachment, so it must end when the attachment does — not when some file is closed. A
//! consumer holds a [`CoherencyRight`] handle: it tells whether the right is held now, and
//! callbacks registered with [`CoherencyRight::on_revoke`] run (outside the engine's lock) when
//! the right ends: the last such device detaches or unbinds, or the context is closed.

use crate::engine::{Context, State};
use crate::group::CtxId;
use crate::Object;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type Callback = Box<dyn FnOnce() + Send>;

/// Shared state behind every handle of one context's right.
#[derive(Default)]
pub(crate) struct RightState {
    active: AtomicBool,
    listeners: Mutex<Vec<Callback>>,
}

/// A consumer's handle on a context's coherency right.
#[derive(Clone)]
pub struct CoherencyRight {
    state: Arc<RightState>,
}

impl std::fmt::Debug for CoherencyRight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CoherencyRight(active: {})", self.is_active())
    }
}

impl CoherencyRight {
    /// Whether non-coherent DMA is possible in the context right now.
    pub fn is_active(&self) -> bool {
        self.state.active.load(Ordering::SeqCst)
    }

    /// Run `f` when the right ends; at once if it is not held now.
    pub fn on_revoke(&self, f: impl FnOnce() + Send + 'static) {
        let mut l = self
            .state
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.is_active() {
            l.push(Box::new(f));
        } else {
            drop(l);
            f();
        }
    }
}

/// Recompute context `c`'s right after an operation; queue the callbacks of a revocation.
pub(crate) fn update(st: &mut State, c: CtxId) {
    let Some(ctx) = st.ctxs.get(&c) else { return };
    // With no non-coherent device on the machine no context holds the right.
    let active = !st.noncoherent.is_empty()
        && ctx.objects.iter().any(|(_, o)| match o {
            Object::Device(d) => d.attached.is_some() && st.noncoherent.contains(&d.dev),
            _ => false,
        });
    // Not held and not gained: nothing to do (the flag only changes under the engine lock).
    if !active && !ctx.coherency.active.load(Ordering::SeqCst) {
        return;
    }
    let right = ctx.coherency.clone();
    set(st, &right, active);
}

/// Set a right's state; a revocation queues its callbacks on the engine.
pub(crate) fn set(st: &mut State, right: &RightState, active: bool) {
    let was = right.active.swap(active, Ordering::SeqCst);
    if was && !active {
        let mut l = right.listeners.lock().unwrap_or_else(|e| e.into_inner());
        st.pending_revocations.extend(l.drain(..));
    }
}

impl Context {
    /// A handle on this context's coherency right.
    pub fn coherency_right(&self) -> CoherencyRight {
        let state = self
            .with(|st, c| Ok(st.ctx(c)?.coherency.clone()))
            .unwrap_or_else(|_| Arc::new(RightState::default()));
        CoherencyRight { state }
    }
}
