//! Timing shared by the criterion benches.
//!
//! On a loaded machine a thread is descheduled part of the time, and a wall-clock timer
//! around a piece of work counts those gaps too. The benches therefore report CPU time:
//! - [`side_cpu`]: the wall time of one side's pieces of work (a [`Timer`]) scaled by the
//!   batch's thread-CPU/wall ratio. Descheduling lands in the timed pieces in proportion to
//!   the CPU time spent in them, so this is their CPU time in expectation; reading a thread
//!   CPU clock around every piece instead would cost a system call each.
//! - [`batch_cpu`]: the thread CPU time of a whole batch (nothing is left out).

#![allow(dead_code)]

use std::time::{Duration, Instant};

use onerecord_tls_bench::{Side, Timer};

/// CPU time consumed by the calling thread so far.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `iters` runs of `run`, timing `side`'s work: its CPU time (see the module docs).
pub fn side_cpu<R>(side: Side, iters: u64, mut run: impl FnMut(&mut Timer) -> R) -> Duration {
    let mut timer = Timer::new(side);
    let (wall0, cpu0) = (Instant::now(), thread_cpu());
    for _ in 0..iters {
        std::hint::black_box(run(&mut timer));
    }
    let (wall, cpu) = (wall0.elapsed(), thread_cpu() - cpu0);
    let share = if wall.is_zero() {
        1.0
    } else {
        (cpu.as_secs_f64() / wall.as_secs_f64()).min(1.0)
    };
    timer.elapsed.mul_f64(share)
}

/// `iters` runs of `run`: the thread CPU time of the whole batch.
pub fn batch_cpu<R>(iters: u64, mut run: impl FnMut() -> R) -> Duration {
    let cpu0 = thread_cpu();
    for _ in 0..iters {
        std::hint::black_box(run());
    }
    thread_cpu() - cpu0
}
