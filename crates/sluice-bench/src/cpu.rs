//! CPU time of a process (user + system, all its threads) from Linux's `/proc/PID/stat`,
//! read before and after the measured window to charge a broker (or the load generator
//! itself) for the messages it moved.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: unexpected format")]
    Format { path: String },
    #[error("sysconf(_SC_CLK_TCK) failed")]
    ClockTicks,
}

/// What `/proc/PID/stat` would be for this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// The load generator itself.
    Current,
    Pid(u32),
}

/// User + system CPU time used so far by `process`.
pub fn cpu_time(process: Process) -> Result<Duration, CpuError> {
    let path = match process {
        Process::Current => "/proc/self/stat".to_string(),
        Process::Pid(pid) => format!("/proc/{pid}/stat"),
    };
    let stat = std::fs::read_to_string(&path).map_err(|source| CpuError::Read {
        path: path.clone(),
        source,
    })?;
    let ticks = stat_ticks(&stat).ok_or(CpuError::Format { path })?;
    let per_second = clock_ticks_per_second()?;
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// utime + stime, in clock ticks, from the text of a `stat` file. The command name (field 2)
/// is in parentheses and may itself contain spaces and parentheses, so fields are counted
/// from the last `)`: after it come state (field 3), ..., utime (14) and stime (15).
fn stat_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> Result<u64, CpuError> {
    // SAFETY: sysconf only reads a system constant; it has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks)
        .ok()
        .filter(|&t| t > 0)
        .ok_or(CpuError::ClockTicks)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (beam.smp) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 30 0 \
                    1000 2000000 3000 18446744073709551615";
        assert_eq!(stat_ticks(stat), Some(1234 + 567));
    }

    #[test]
    fn a_truncated_stat_line_is_a_format_error_not_a_zero() {
        assert_eq!(stat_ticks("4242 (sluice) S 1 2 3"), None);
        assert_eq!(stat_ticks("no parenthesis here"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let spent = cpu_time(Process::Current).unwrap();
        assert!(spent < Duration::from_secs(3600));
    }
}
