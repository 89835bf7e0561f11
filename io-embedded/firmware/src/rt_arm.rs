//! The bare-metal runtime for QEMU `mps2-an386` (Cortex-M4F): vector table and reset, fault
//! handler, CMSDK UART output, exit through semihosting, SysTick-based instruction and time
//! counters, a critical section. The same interface as the RISC-V `rt.rs`.

use core::arch::{asm, global_asm};
use core::cell::Cell;
use core::fmt::{self, Write};

// Vector table (initial stack pointer, reset, then every exception to the fault handler) and
// reset: zeroed .bss, FPU enabled (hard-float code may use it), SysTick started, then Rust.
// No .data copy: QEMU loads the ELF sections where they run.
global_asm!(
    ".section .vector_table, \"a\"",
    ".global __vectors",
    "__vectors:",
    ".word __stack_top",
    ".word fw_reset",
    ".rept 14",
    ".word fw_fault_entry",
    ".endr",
    ".section .text.start, \"ax\"",
    ".thumb_func",
    ".global fw_reset",
    "fw_reset:",
    "    ldr r0, =__bss_start",
    "    ldr r1, =__bss_end",
    "    movs r2, #0",
    "1:  cmp r0, r1",
    "    bhs 2f",
    "    str r2, [r0], #4",
    "    b 1b",
    "2:  ldr r0, =0xE000ED88",
    "    ldr r1, [r0]",
    "    orr r1, r1, #(0xF << 20)",
    "    str r1, [r0]",
    "    dsb",
    "    isb",
    "    bl fw_main",
    "3:  b 3b",
    ".thumb_func",
    "fw_fault_entry:",
    "    mrs r0, ipsr",
    "    bl fw_trap",
    "4:  b 4b",
);

const UART: usize = 0x4000_4000;
const SYST_CSR: *mut u32 = 0xE000_E010 as *mut u32;
const SYST_RVR: *mut u32 = 0xE000_E014 as *mut u32;
const SYST_CVR: *mut u32 = 0xE000_E018 as *mut u32;
/// The board's system clock (SysTick runs from it): 25 MHz.
const SYSCLK_HZ: u64 = 25_000_000;

fn uart_init() {
    // SAFETY: MMIO registers of the CMSDK APB UART0: BAUDDIV, then CTRL = TX | RX enable.
    unsafe {
        ((UART + 0x10) as *mut u32).write_volatile(16);
        ((UART + 0x8) as *mut u32).write_volatile(0b11);
    }
}

fn uart_put(b: u8) {
    // SAFETY: MMIO registers of the CMSDK APB UART0 (STATE bit 0: TX buffer full).
    unsafe {
        while ((UART + 0x4) as *const u32).read_volatile() & 1 != 0 {}
        (UART as *mut u32).write_volatile(u32::from(b));
    }
}

/// The UART of `mps2-an386`.
pub struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        started();
        s.bytes().for_each(uart_put);
        Ok(())
    }
}

/// Send raw bytes over the UART (used by the size probes).
#[allow(dead_code)]
pub fn uart_write(bytes: &[u8]) {
    started();
    bytes.iter().copied().for_each(uart_put);
}

/// Read the bytes the UART has received (none when empty; used by the size probes).
#[allow(dead_code)]
pub fn uart_read(buf: &mut [u8]) -> usize {
    started();
    let mut n = 0;
    // SAFETY: MMIO registers of the CMSDK APB UART0 (STATE bit 1: RX buffer full).
    while n < buf.len() && unsafe { ((UART + 0x4) as *const u32).read_volatile() } & 2 != 0 {
        buf[n] = unsafe { (UART as *const u32).read_volatile() } as u8;
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

/// Exit QEMU through semihosting: status 0 is success, anything else is failure (QEMU exits
/// with 1).
pub fn exit(code: u32) -> ! {
    // ADP_Stopped_ApplicationExit, or ADP_Stopped_RunTimeErrorUnknown.
    let reason: u32 = if code == 0 { 0x20026 } else { 0x20023 };
    loop {
        // SAFETY: semihosting SYS_EXIT (QEMU runs with -semihosting).
        unsafe { asm!("bkpt #0xab", in("r0") 0x18u32, in("r1") reason) };
    }
}

static TICKS: critical_section::Mutex<Cell<(u64, u32, bool)>> =
    critical_section::Mutex::new(Cell::new((0, 0, false)));

/// Start the UART and SysTick on first use.
fn started() {
    critical_section::with(|cs| {
        let cell = TICKS.borrow(cs);
        let (acc, last, on) = cell.get();
        if !on {
            uart_init();
            // SAFETY: SysTick registers: reload 2^24 - 1, clear, enable on the CPU clock.
            unsafe {
                SYST_RVR.write_volatile(0x00ff_ffff);
                SYST_CVR.write_volatile(0);
                SYST_CSR.write_volatile(0b101);
            }
            cell.set((acc, last, true));
        }
    });
}

/// CPU clock ticks since start (SysTick counts down from 2^24 - 1; one wrap between calls at
/// most, which every measured step respects: 2^24 ticks are 0.67 s of the 25 MHz clock).
fn ticks() -> u64 {
    started();
    critical_section::with(|cs| {
        let cell = TICKS.borrow(cs);
        let (acc, last, on) = cell.get();
        // SAFETY: reading the SysTick current value.
        let now = 0x00ff_ffff - (unsafe { SYST_CVR.read_volatile() } & 0x00ff_ffff);
        let delta = now.wrapping_sub(last) & 0x00ff_ffff;
        cell.set((acc + u64::from(delta), now, on));
        acc + u64::from(delta)
    })
}

/// Instructions executed, from SysTick under `-icount shift=0` (1 instruction = 1 ns of
/// virtual time, SysTick ticks at 25 MHz): a resolution of 40 instructions.
pub fn instret() -> u64 {
    ticks() * (1_000_000_000 / SYSCLK_HZ)
}

/// Milliseconds since start.
pub fn millis() -> u64 {
    ticks() / (SYSCLK_HZ / 1000)
}

/// The current stack pointer.
#[inline(always)]
pub fn sp() -> usize {
    let sp: usize;
    // SAFETY: reads a register.
    unsafe { asm!("mov {}, sp", out(reg) sp) };
    sp
}

#[unsafe(no_mangle)]
extern "C" fn fw_trap(ipsr: u32) -> ! {
    crate::println!("FAIL: fault, exception {ipsr}");
    exit(3)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::println!("FAIL: panic: {info}");
    exit(2)
}

struct SingleCore;
critical_section::set_impl!(SingleCore);

// SAFETY: one core; masking interrupts (PRIMASK) makes the section exclusive.
unsafe impl critical_section::Impl for SingleCore {
    unsafe fn acquire() -> bool {
        let primask: u32;
        // SAFETY: read PRIMASK, then disable interrupts.
        unsafe { asm!("mrs {}, PRIMASK", "cpsid i", out(reg) primask) };
        primask & 1 == 0
    }

    unsafe fn release(was_enabled: bool) {
        if was_enabled {
            // SAFETY: re-enable interrupts.
            unsafe { asm!("cpsie i") };
        }
    }
}

// The demo random source (shared with the RISC-V runtime).
#[path = "rng.rs"]
mod rng;
