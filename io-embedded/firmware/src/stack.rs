//! Stack measurement shared by both targets: paint the unused stack with a pattern, run a
//! step, then find the lowest word that was overwritten. Only reading the stack pointer
//! (`rt::sp`) differs per target; both linker scripts define `__stack_bottom`.

unsafe extern "C" {
    static __stack_bottom: u8;
}

/// Lowest address of the stack.
fn stack_bottom() -> usize {
    // Only the address of the linker symbol is taken.
    core::ptr::addr_of!(__stack_bottom) as usize
}

const PAINT: u32 = 0x5afe_c0de;

/// Fill the unused stack below the current frame (less a margin) with a pattern.
#[inline(never)]
pub fn paint_stack() {
    let top = (crate::rt::sp() - 256) & !3;
    let mut p = stack_bottom();
    while p < top {
        // SAFETY: the region between the stack's bottom and below the live frame is unused.
        unsafe { (p as *mut u32).write_volatile(PAINT) };
        p += 4;
    }
}

/// Bytes of stack touched since [`paint_stack`], measured from `from` (a stack pointer).
pub fn stack_used_below(from: usize) -> usize {
    let mut p = stack_bottom();
    // SAFETY: reading the painted stack region.
    while p < from && unsafe { (p as *const u32).read_volatile() } == PAINT {
        p += 4;
    }
    from.saturating_sub(p)
}
