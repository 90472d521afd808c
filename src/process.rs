//! Which process a record names, and whether it still runs: a pid alone is not proof (pids are
//! reused, and a machine that restarted has none of its old processes), so a process is recorded
//! with its start time, the machine and the boot it ran in, and checked against all three.

use serde::{Deserialize, Serialize};

/// Environment variable holding the name of the pod a process runs in (set from the downward
/// API in the pods idcctl makes).
pub const POD_NAME_ENV: &str = "IDC_POD_NAME";

/// A process as a record names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    /// Its start time in clock ticks after boot (`/proc/<pid>/stat`, field 22).
    pub start_ticks: u64,
    pub host: String,
    /// The kernel's boot id: a restarted machine has another.
    pub boot_id: String,
}

/// What can be known about a recorded process from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It is running (same pid, same start time, same boot).
    Alive,
    /// It has exited (or is a zombie), its pid now belongs to another process, or the machine
    /// restarted since.
    Gone,
    /// It ran on another machine: only its heartbeats can tell.
    Elsewhere,
}

impl ProcessRef {
    /// This process. Where `/proc` cannot be read (not mounted, another OS) its start time is
    /// unknown (0): no process, this one included, is then found alive from here, which is
    /// what [`ProcessRef::liveness`] says of every process on such a machine anyway.
    pub fn current() -> Self {
        let pid = std::process::id();
        Self::of(pid).unwrap_or_else(|| Self {
            pid,
            start_ticks: 0,
            host: hostname(),
            boot_id: boot_id(),
        })
    }

    /// The running process `pid` (None: there is none).
    pub fn of(pid: u32) -> Option<Self> {
        let stat = read_stat(pid)?;
        (stat.state != 'Z').then(|| Self {
            pid,
            start_ticks: stat.start_ticks,
            host: hostname(),
            boot_id: boot_id(),
        })
    }

    pub fn liveness(&self) -> Liveness {
        if self.host != hostname() {
            return Liveness::Elsewhere;
        }
        if self.boot_id != boot_id() {
            return Liveness::Gone;
        }
        match read_stat(self.pid) {
            Some(s) if s.start_ticks == self.start_ticks && s.state != 'Z' => Liveness::Alive,
            _ => Liveness::Gone,
        }
    }

    /// Sends `signal` only if this is still the recorded process; says whether it was sent.
    pub fn signal(&self, signal: i32) -> bool {
        if self.liveness() != Liveness::Alive {
            return false;
        }
        // SAFETY: kill(2) on a pid just checked to be the recorded process. (The window between
        // the check and the call is microseconds; pids are reused only after a wrap-around.)
        unsafe { libc::kill(self.pid as i32, signal) == 0 }
    }
}

struct Stat {
    state: char,
    start_ticks: u64,
}

/// Fields 3 (state) and 22 (starttime) of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself hold spaces or parentheses, so fields are counted after its last
/// closing parenthesis.
fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        start_ticks: fields.get(22 - 3)?.parse().ok()?,
    })
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// This machine's name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.state, s.start_ticks), ('S', 987654));
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn a_process_is_alive_until_it_exits_and_its_pid_proves_nothing_after() {
        let me = ProcessRef::current();
        assert_eq!(me.liveness(), Liveness::Alive);
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let r = ProcessRef::of(child.id()).unwrap();
        assert_eq!(r.liveness(), Liveness::Alive);
        // A process that reuses the pid has another start time.
        let reused = ProcessRef {
            start_ticks: r.start_ticks + 1,
            ..r.clone()
        };
        assert_eq!(reused.liveness(), Liveness::Gone);
        assert!(
            !reused.signal(libc::SIGKILL),
            "never signals another process"
        );
        assert_eq!(r.liveness(), Liveness::Alive);
        assert!(r.signal(libc::SIGKILL));
        // Until it is reaped it is a zombie: gone all the same.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(r.liveness(), Liveness::Gone);
        child.wait().unwrap();
        assert_eq!(r.liveness(), Liveness::Gone);
        let rebooted = ProcessRef {
            boot_id: "another-boot".into(),
            ..me.clone()
        };
        assert_eq!(rebooted.liveness(), Liveness::Gone);
        let remote = ProcessRef {
            host: "another-machine".into(),
            ..me
        };
        assert_eq!(remote.liveness(), Liveness::Elsewhere);
    }

    mod fuzz {
        use super::*;
        use crate::fuzz::config;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(config(256))]

            /// Whatever `/proc/<pid>/stat` holds, it is read or taken for no process.
            #[test]
            fn any_stat_line(t in "\\PC{0,120}", fields in "[0-9()SZ -]{0,80}") {
                parse_stat(&t);
                parse_stat(&format!("42 (x) {fields}"));
            }
        }
    }
}
