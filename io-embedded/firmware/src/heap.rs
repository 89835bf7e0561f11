//! The global allocator: `embedded-alloc`'s linked-list heap over a static arena, wrapped in
//! a counter of live bytes, high-water mark and allocation count, attributed to the role
//! (client or server) whose step is running.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::RefCell;
use core::mem::MaybeUninit;

use critical_section::Mutex;
use embedded_alloc::LlffHeap;

/// Bytes of the heap arena.
pub const HEAP_SIZE: usize = 192 * 1024;

/// Who is running: the setup code, the client or the server.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// Building policies and anything shared.
    Setup = 0,
    /// A client step.
    Client = 1,
    /// A server step.
    Server = 2,
}

/// Counters of one role (or of all, for `total`).
#[derive(Clone, Copy, Default, Debug)]
pub struct Counts {
    /// Live bytes now.
    pub live: isize,
    /// Highest live bytes since the last reset.
    pub peak: isize,
    /// Allocations since the last reset.
    pub allocs: usize,
}

#[derive(Clone, Copy, Default)]
struct State {
    role: usize,
    roles: [Counts; 3],
    total: Counts,
    /// Highest live bytes ever (never reset).
    high_water: isize,
}

pub struct Counting {
    heap: LlffHeap,
    state: Mutex<RefCell<State>>,
}

#[global_allocator]
pub static HEAP: Counting = Counting {
    heap: LlffHeap::empty(),
    state: Mutex::new(RefCell::new(State {
        role: 0,
        roles: [Counts {
            live: 0,
            peak: 0,
            allocs: 0,
        }; 3],
        total: Counts {
            live: 0,
            peak: 0,
            allocs: 0,
        },
        high_water: 0,
    })),
};

static mut ARENA: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];

/// Hand the arena to the allocator (once, first thing).
pub fn init() {
    // SAFETY: called once before any allocation; the arena is used only by the allocator.
    unsafe {
        HEAP.heap
            .init(core::ptr::addr_of_mut!(ARENA) as usize, HEAP_SIZE)
    }
}

fn update(c: &mut Counts, delta: isize, alloc: bool) {
    c.live += delta;
    if c.live > c.peak {
        c.peak = c.live;
    }
    if alloc {
        c.allocs += 1;
    }
}

impl Counting {
    fn account(&self, delta: isize, alloc: bool) {
        critical_section::with(|cs| {
            let mut s = self.state.borrow_ref_mut(cs);
            let role = s.role;
            update(&mut s.roles[role], delta, alloc);
            update(&mut s.total, delta, alloc);
            s.high_water = s.high_water.max(s.total.live);
        });
    }

    /// Run `f` as `role`.
    pub fn as_role<R>(&self, role: Role, f: impl FnOnce() -> R) -> R {
        let prev = critical_section::with(|cs| {
            let mut s = self.state.borrow_ref_mut(cs);
            core::mem::replace(&mut s.role, role as usize)
        });
        let r = f();
        critical_section::with(|cs| self.state.borrow_ref_mut(cs).role = prev);
        r
    }

    /// Peaks restart from the live values; allocation counts from zero.
    pub fn reset_peaks(&self) {
        critical_section::with(|cs| {
            let mut guard = self.state.borrow_ref_mut(cs);
            let s = &mut *guard;
            for c in s.roles.iter_mut().chain(core::iter::once(&mut s.total)) {
                c.peak = c.live;
                c.allocs = 0;
            }
        });
    }

    /// Counters of `role`.
    pub fn role(&self, role: Role) -> Counts {
        critical_section::with(|cs| self.state.borrow_ref(cs).roles[role as usize])
    }

    /// Highest live heap bytes since boot.
    pub fn high_water(&self) -> isize {
        critical_section::with(|cs| self.state.borrow_ref(cs).high_water)
    }

    /// Counters of everything.
    pub fn total(&self) -> Counts {
        critical_section::with(|cs| self.state.borrow_ref(cs).total)
    }
}

// SAFETY: delegates to the linked-list heap; the counters are behind a critical section.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { self.heap.alloc(layout) };
        if !p.is_null() {
            self.account(layout.size() as isize, true);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { self.heap.dealloc(ptr, layout) };
        self.account(-(layout.size() as isize), false);
    }
}
