//! The bare-metal runtime for QEMU `virt`: reset entry, trap handler, UART output, exit
//! through the SiFive test device, cycle/instruction counters, a critical section.

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};

// Reset: stack pointer, zeroed .bss, trap vector, then Rust. No .data copy: QEMU loads the
// ELF into RAM, where it runs.
global_asm!(
    ".section .text.start, \"ax\"",
    ".global _start",
    "_start:",
    "    la sp, __stack_top",
    "    la t0, __bss_start",
    "    la t1, __bss_end",
    "1:  bgeu t0, t1, 2f",
    "    sw zero, 0(t0)",
    "    addi t0, t0, 4",
    "    j 1b",
    "2:  la t0, trap_entry",
    "    csrw mtvec, t0",
    "    call fw_main",
    "3:  j 3b",
    ".align 4",
    "trap_entry:",
    "    call fw_trap",
    "4:  j 4b",
);

const UART: *mut u8 = 0x1000_0000 as *mut u8;
const TEST_DEVICE: *mut u32 = 0x0010_0000 as *mut u32;
const MTIME: *const u32 = 0x0200_bff8 as *const u32;

/// The 16550 UART of `virt` (QEMU's model needs no initialisation).
pub struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: MMIO register of the virt board's UART.
            unsafe { UART.write_volatile(b) };
        }
        Ok(())
    }
}

/// Send raw bytes over the UART (used by the size probes).
#[allow(dead_code)]
pub fn uart_write(bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: MMIO register of the virt board's UART.
        unsafe { UART.write_volatile(b) };
    }
}

/// Read the bytes the UART has received (none when its FIFO is empty; used by the size
/// probes).
#[allow(dead_code)]
pub fn uart_read(buf: &mut [u8]) -> usize {
    let mut n = 0;
    // SAFETY: MMIO registers of the virt board's UART (LSR bit 0: data ready).
    while n < buf.len() && unsafe { UART.add(5).read_volatile() } & 1 != 0 {
        buf[n] = unsafe { UART.read_volatile() };
        n += 1;
    }
    n
}

/// Print to the UART.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::rt::Uart, $($arg)*);
    }};
}

/// Exit QEMU: status 0 is success, anything else is failure (QEMU exits with that code).
pub fn exit(code: u32) -> ! {
    let value = if code == 0 {
        0x5555
    } else {
        (code << 16) | 0x3333
    };
    // SAFETY: MMIO register of the virt board's SiFive test device.
    unsafe { TEST_DEVICE.write_volatile(value) };
    loop {
        // SAFETY: waiting for QEMU to stop.
        unsafe { asm!("wfi") };
    }
}

/// Instructions retired (exact under `-icount shift=0`).
pub fn instret() -> u64 {
    loop {
        let (hi, lo, hi2): (u32, u32, u32);
        // SAFETY: reading counters in machine mode.
        unsafe {
            asm!("csrr {0}, minstreth", "csrr {1}, minstret", "csrr {2}, minstreth",
                 out(reg) hi, out(reg) lo, out(reg) hi2);
        }
        if hi == hi2 {
            return (u64::from(hi) << 32) | u64::from(lo);
        }
    }
}

/// Milliseconds from the CLINT timer (10 MHz on `virt`), for the handshake clock.
pub fn millis() -> u64 {
    loop {
        // SAFETY: MMIO registers of the CLINT.
        let (hi, lo, hi2) = unsafe {
            (
                MTIME.add(1).read_volatile(),
                MTIME.read_volatile(),
                MTIME.add(1).read_volatile(),
            )
        };
        if hi == hi2 {
            return ((u64::from(hi) << 32) | u64::from(lo)) / 10_000;
        }
    }
}

/// The current stack pointer.
#[inline(always)]
pub fn sp() -> usize {
    let sp: usize;
    // SAFETY: reads a register.
    unsafe { asm!("mv {}, sp", out(reg) sp) };
    sp
}

#[unsafe(no_mangle)]
extern "C" fn fw_trap() -> ! {
    let (cause, epc, tval): (usize, usize, usize);
    // SAFETY: reading trap CSRs.
    unsafe {
        asm!("csrr {}, mcause", "csrr {}, mepc", "csrr {}, mtval", out(reg) cause, out(reg) epc, out(reg) tval)
    };
    crate::println!("FAIL: trap mcause={cause:#x} mepc={epc:#x} mtval={tval:#x}");
    exit(3)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::println!("FAIL: panic: {info}");
    exit(2)
}

struct SingleHart;
critical_section::set_impl!(SingleHart);

// SAFETY: one hart; masking machine interrupts makes the section exclusive.
unsafe impl critical_section::Impl for SingleHart {
    unsafe fn acquire() -> bool {
        let mstatus: usize;
        // SAFETY: clear MIE, returning the previous mstatus.
        unsafe { asm!("csrrci {}, mstatus, 8", out(reg) mstatus) };
        mstatus & 8 != 0
    }

    unsafe fn release(was_enabled: bool) {
        if was_enabled {
            // SAFETY: restore MIE.
            unsafe { asm!("csrsi mstatus, 8") };
        }
    }
}

// The demo random source (shared with the ARM runtime).
#[path = "rng.rs"]
mod rng;
