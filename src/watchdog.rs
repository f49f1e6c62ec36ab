//! The watchdog: the hardware that fences a hung primary (DESIGN §1).
//!
//! A Linux watchdog device (`/dev/watchdog`) is driven through its ioctls:
//! opening arms it, SETTIMEOUT may round so the timeout is read back, a
//! keepalive pings it, and only the magic character `V` written before close
//! stops it. Dropping a [`Watchdog`] closes the device *without* the magic
//! character, so an agent that crashes or aborts still gets reset.
//!
//! The testing driver appends each operation to a file or FIFO as
//! `<CLOCK_MONOTONIC ms> <op>` (like Patroni's acceptance-test device), so
//! tests can check the sequence and emulate the reset.
//!
//! All calls are synchronous: they are quick char-device operations.

use crate::config::WatchdogDriver;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `struct watchdog_info` from linux/watchdog.h.
#[repr(C)]
#[derive(Default)]
pub struct WatchdogInfo {
    pub options: u32,
    pub firmware_version: u32,
    pub identity: [u8; 32],
}

nix::ioctl_read!(wdioc_getsupport, b'W', 0, WatchdogInfo);
nix::ioctl_read!(wdioc_getbootstatus, b'W', 2, libc::c_int);
nix::ioctl_read!(wdioc_keepalive, b'W', 5, libc::c_int);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, libc::c_int);

/// Option flags (WDIOF_*).
const FLAGS: &[(u32, &str)] = &[
    (0x0001, "OVERHEAT"),
    (0x0002, "FANFAULT"),
    (0x0004, "EXTERN1"),
    (0x0008, "EXTERN2"),
    (0x0010, "POWERUNDER"),
    (0x0020, "CARDRESET"),
    (0x0040, "POWEROVER"),
    (0x0080, "SETTIMEOUT"),
    (0x0100, "MAGICCLOSE"),
    (0x0200, "PRETIMEOUT"),
    (0x0400, "ALARMONLY"),
    (0x8000, "KEEPALIVEPING"),
];
const WDIOF_CARDRESET: u32 = 0x0020;
const WDIOF_SETTIMEOUT: u32 = 0x0080;
const WDIOF_MAGICCLOSE: u32 = 0x0100;
const WDIOF_ALARMONLY: u32 = 0x0400;

/// Why the watchdog could not be used, written for the operator.
#[derive(Debug)]
pub enum WatchdogError {
    Busy(PathBuf),
    NotFound(PathBuf),
    Permission(PathBuf),
    AlarmOnly {
        device: PathBuf,
        identity: String,
    },
    TimeoutRejected {
        device: PathBuf,
        wanted: u32,
        got: u32,
    },
    NoReader(PathBuf),
    Io {
        op: &'static str,
        device: PathBuf,
        source: std::io::Error,
    },
}

impl std::fmt::Display for WatchdogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchdogError::Busy(d) => write!(
                f,
                "{} is held by another process (systemd RuntimeWatchdogSec or a watchdog daemon?)",
                d.display()
            ),
            WatchdogError::NotFound(d) => write!(
                f,
                "{} does not exist (is a watchdog driver loaded? e.g. modprobe softdog, i6300esb or iTCO_wdt)",
                d.display()
            ),
            WatchdogError::Permission(d) => write!(
                f,
                "no permission to open {} (install the udev rule giving the postgres group read-write access)",
                d.display()
            ),
            WatchdogError::AlarmOnly { device, identity } => write!(
                f,
                "{} ({identity}) only raises an alarm and cannot reset the machine: refusing it",
                device.display()
            ),
            WatchdogError::TimeoutRejected {
                device,
                wanted,
                got,
            } => write!(
                f,
                "{} set the timeout to {got}s when {wanted}s was asked: a longer timeout would outlive the lease",
                device.display()
            ),
            WatchdogError::NoReader(d) => write!(f, "{} is a FIFO with no reader", d.display()),
            WatchdogError::Io { op, device, source } => {
                write!(f, "{op} on {}: {source}", device.display())
            }
        }
    }
}

impl std::error::Error for WatchdogError {}

fn open_error(device: &Path, e: std::io::Error) -> WatchdogError {
    match e.raw_os_error() {
        Some(libc::EBUSY) => WatchdogError::Busy(device.into()),
        Some(libc::ENOENT) | Some(libc::ENODEV) => WatchdogError::NotFound(device.into()),
        Some(libc::EACCES) | Some(libc::EPERM) => WatchdogError::Permission(device.into()),
        Some(libc::ENXIO) => WatchdogError::NoReader(device.into()),
        _ => WatchdogError::Io {
            op: "open",
            device: device.into(),
            source: e,
        },
    }
}

/// Milliseconds of CLOCK_MONOTONIC (the testing driver's timestamps).
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for the kernel to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

enum Backend {
    Device(File),
    Testing(File),
}

/// An armed watchdog. Drop closes it without the magic character: the timer
/// keeps running and the machine is reset unless someone feeds it.
pub struct Watchdog {
    backend: Option<Backend>,
    device: PathBuf,
    timeout: u32,
    identity: String,
    /// WDIOF_MAGICCLOSE: only the magic character stops it. Without it any
    /// close stops the timer, so an agent that crashes leaves no fence.
    magic_close: bool,
}

fn identity_of(info: &WatchdogInfo) -> String {
    let end = info
        .identity
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(info.identity.len());
    String::from_utf8_lossy(&info.identity[..end])
        .trim()
        .to_string()
}

fn open_device(device: &Path) -> Result<File, WatchdogError> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(device)
        .map_err(|e| open_error(device, e))
}

fn get_support(f: &File, device: &Path) -> Result<WatchdogInfo, WatchdogError> {
    let mut info = WatchdogInfo::default();
    // SAFETY: the fd is open; info is a valid watchdog_info to fill.
    unsafe { wdioc_getsupport(f.as_raw_fd(), &mut info) }.map_err(|e| WatchdogError::Io {
        op: "WDIOC_GETSUPPORT",
        device: device.into(),
        source: e.into(),
    })?;
    Ok(info)
}

fn set_and_read_timeout(f: &File, device: &Path, secs: u32) -> Result<u32, WatchdogError> {
    let mut t: libc::c_int = secs as libc::c_int;
    // SAFETY: the fd is open; t is a valid int the kernel reads and rewrites.
    unsafe { wdioc_settimeout(f.as_raw_fd(), &mut t) }.map_err(|e| WatchdogError::Io {
        op: "WDIOC_SETTIMEOUT",
        device: device.into(),
        source: e.into(),
    })?;
    let mut got: libc::c_int = 0;
    // SAFETY: as above; got is written by the kernel.
    unsafe { wdioc_gettimeout(f.as_raw_fd(), &mut got) }.map_err(|e| WatchdogError::Io {
        op: "WDIOC_GETTIMEOUT",
        device: device.into(),
        source: e.into(),
    })?;
    Ok(got.max(0) as u32)
}

fn magic_close(mut f: File, device: &Path) -> Result<(), WatchdogError> {
    f.write_all(b"V").map_err(|e| WatchdogError::Io {
        op: "magic close",
        device: device.into(),
        source: e,
    })
}

fn open_testing(device: &Path) -> Result<File, WatchdogError> {
    let is_fifo = std::fs::metadata(device)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    let mut o = OpenOptions::new();
    if is_fifo {
        o.write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC);
    } else {
        o.append(true).create(true).custom_flags(libc::O_CLOEXEC);
    }
    o.open(device).map_err(|e| open_error(device, e))
}

fn log_line(f: &mut File, device: &Path, op: &str) -> Result<(), WatchdogError> {
    let line = format!("{} {op}\n", monotonic_ms());
    f.write_all(line.as_bytes()).map_err(|e| WatchdogError::Io {
        op: "write",
        device: device.into(),
        source: e,
    })
}

impl Watchdog {
    /// Opens and arms the watchdog with `timeout_secs`, reads the timeout
    /// back and refuses (after a magic close) a device that set a longer one
    /// or that cannot reset the machine.
    pub fn arm(
        driver: WatchdogDriver,
        device: &Path,
        timeout_secs: u32,
    ) -> Result<Watchdog, WatchdogError> {
        let extra = std::env::var("LEASEDOG_TESTING_WATCHDOG_TIMEOUT_ADD")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        Self::arm_with(driver, device, timeout_secs, extra)
    }

    /// `arm`, with the testing driver's read-back made `testing_extra`
    /// seconds longer than asked (to exercise the refusal).
    pub fn arm_with(
        driver: WatchdogDriver,
        device: &Path,
        timeout_secs: u32,
        testing_extra: u32,
    ) -> Result<Watchdog, WatchdogError> {
        match driver {
            WatchdogDriver::Testing => {
                let mut f = open_testing(device)?;
                log_line(&mut f, device, "open")?;
                let got = timeout_secs + testing_extra;
                log_line(&mut f, device, &format!("timeout {got}"))?;
                let w = Watchdog {
                    backend: Some(Backend::Testing(f)),
                    device: device.into(),
                    timeout: got,
                    identity: "leasedog testing watchdog".into(),
                    // The testing device can pretend to lack the magic close.
                    magic_close: std::env::var_os("LEASEDOG_TESTING_WATCHDOG_NO_MAGICCLOSE")
                        .is_none(),
                };
                if got > timeout_secs {
                    let _ = w.disarm();
                    return Err(WatchdogError::TimeoutRejected {
                        device: device.into(),
                        wanted: timeout_secs,
                        got,
                    });
                }
                Ok(w)
            }
            WatchdogDriver::Device => {
                let f = open_device(device)?;
                let info = match get_support(&f, device) {
                    Ok(i) => i,
                    Err(e) => {
                        let _ = magic_close(f, device);
                        return Err(e);
                    }
                };
                let identity = identity_of(&info);
                if info.options & WDIOF_ALARMONLY != 0 {
                    let _ = magic_close(f, device);
                    return Err(WatchdogError::AlarmOnly {
                        device: device.into(),
                        identity,
                    });
                }
                let got = match set_and_read_timeout(&f, device, timeout_secs) {
                    Ok(g) => g,
                    Err(e) => {
                        let _ = magic_close(f, device);
                        return Err(e);
                    }
                };
                if got > timeout_secs || got == 0 {
                    let _ = magic_close(f, device);
                    return Err(WatchdogError::TimeoutRejected {
                        device: device.into(),
                        wanted: timeout_secs,
                        got,
                    });
                }
                Ok(Watchdog {
                    backend: Some(Backend::Device(f)),
                    device: device.into(),
                    timeout: got,
                    identity,
                    magic_close: info.options & WDIOF_MAGICCLOSE != 0,
                })
            }
        }
    }

    /// Whether the device supports the magic close (see the field).
    pub fn magic_close(&self) -> bool {
        self.magic_close
    }

    /// The open device, to hand to systemd's file descriptor store.
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        match &self.backend {
            Some(Backend::Device(f)) | Some(Backend::Testing(f)) => Some(f.as_fd()),
            None => None,
        }
    }

    /// Takes over a watchdog that is already open and counting: the
    /// descriptor systemd's file descriptor store kept while the previous
    /// agent crashed (closing it would have pinged it, restarting its
    /// countdown past the lease). Its timeout is read back; nothing is
    /// written, so the hardware deadline stays the previous feed's.
    pub fn adopt(
        driver: WatchdogDriver,
        device: &Path,
        fd: std::os::fd::OwnedFd,
    ) -> Result<Watchdog, WatchdogError> {
        let f = File::from(fd);
        match driver {
            WatchdogDriver::Testing => {
                let mut f = f;
                log_line(&mut f, device, "adopt")?;
                Ok(Watchdog {
                    backend: Some(Backend::Testing(f)),
                    device: device.into(),
                    timeout: 0,
                    identity: "leasedog testing watchdog".into(),
                    magic_close: true,
                })
            }
            WatchdogDriver::Device => {
                let info = get_support(&f, device)?;
                let mut t: libc::c_int = 0;
                // SAFETY: the fd is an open watchdog device; `t` is a c_int.
                unsafe { wdioc_gettimeout(f.as_raw_fd(), &mut t) }.map_err(|e| {
                    WatchdogError::Io {
                        op: "WDIOC_GETTIMEOUT",
                        device: device.into(),
                        source: e.into(),
                    }
                })?;
                Ok(Watchdog {
                    backend: Some(Backend::Device(f)),
                    device: device.into(),
                    timeout: t.max(0) as u32,
                    identity: identity_of(&info),
                    magic_close: info.options & WDIOF_MAGICCLOSE != 0,
                })
            }
        }
    }

    /// Pings the watchdog.
    pub fn keepalive(&mut self) -> Result<(), WatchdogError> {
        match self.backend.as_mut() {
            Some(Backend::Device(f)) => {
                let mut dummy: libc::c_int = 0;
                // SAFETY: the fd is open; the argument is ignored by drivers.
                unsafe { wdioc_keepalive(f.as_raw_fd(), &mut dummy) }
                    .map(|_| ())
                    .map_err(|e| WatchdogError::Io {
                        op: "WDIOC_KEEPALIVE",
                        device: self.device.clone(),
                        source: e.into(),
                    })
            }
            Some(Backend::Testing(f)) => log_line(f, &self.device, "keepalive"),
            None => Ok(()),
        }
    }

    /// Sets a new timeout on the running watchdog (WDIOC_SETTIMEOUT, which
    /// pings it) and reads it back: the timeout it now runs with. The
    /// testing driver logs `timeout N`, its ping.
    pub fn set_timeout(&mut self, secs: u32) -> Result<u32, WatchdogError> {
        let got = match self.backend.as_mut() {
            Some(Backend::Device(f)) => set_and_read_timeout(f, &self.device, secs)?,
            Some(Backend::Testing(f)) => {
                log_line(f, &self.device, &format!("timeout {secs}"))?;
                secs
            }
            None => secs,
        };
        self.timeout = got;
        Ok(got)
    }

    /// Stops the timer: the magic character, then close.
    pub fn disarm(mut self) -> Result<(), WatchdogError> {
        match self.backend.take() {
            Some(Backend::Device(f)) => magic_close(f, &self.device),
            Some(Backend::Testing(mut f)) => log_line(&mut f, &self.device, "magic-close"),
            None => Ok(()),
        }
    }

    /// The timeout the device reported back, in seconds.
    pub fn timeout(&self) -> u32 {
        self.timeout
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Close WITHOUT the magic character: the timer keeps running.
        if let Some(Backend::Testing(mut f)) = self.backend.take() {
            let _ = log_line(&mut f, &self.device, "close");
        }
    }
}

/// Whether the last reboot was caused by the watchdog (WDIOF_CARDRESET in
/// the boot status), read from sysfs so the device is not opened (opening
/// arms it). Err when sysfs does not say.
pub fn boot_status(driver: WatchdogDriver, device: &Path) -> Result<bool, String> {
    if driver == WatchdogDriver::Testing {
        return Ok(false);
    }
    let name = device
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("watchdog");
    let name = if name == "watchdog" {
        "watchdog0"
    } else {
        name
    };
    let path = format!("/sys/class/watchdog/{name}/bootstatus");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let v: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{path}: not a number: {text:?}"))?;
    Ok(v & WDIOF_CARDRESET != 0)
}

/// What `leasedog watchdog-check` reports.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub driver: String,
    pub device: String,
    pub identity: String,
    pub firmware_version: u32,
    pub options: Vec<String>,
    pub timeout_wanted: u32,
    pub timeout_read_back: u32,
    pub can_set_timeout: bool,
    pub magic_close: bool,
    pub last_boot_by_watchdog: bool,
    pub disarmed: bool,
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "device:            {} ({})", self.device, self.driver)?;
        writeln!(
            f,
            "identity:          {} (firmware {})",
            self.identity, self.firmware_version
        )?;
        writeln!(f, "options:           {}", self.options.join(" "))?;
        writeln!(
            f,
            "timeout:           {}s asked, {}s read back",
            self.timeout_wanted, self.timeout_read_back
        )?;
        writeln!(f, "can set timeout:   {}", yes(self.can_set_timeout))?;
        writeln!(f, "magic close:       {}", yes(self.magic_close))?;
        writeln!(
            f,
            "last boot by watchdog: {}",
            yes(self.last_boot_by_watchdog)
        )?;
        writeln!(f, "disarmed again:    {}", yes(self.disarmed))
    }
}

/// Arms the device with `timeout_secs`, reads everything back, then disarms
/// it with the magic close.
pub fn check(
    driver: WatchdogDriver,
    device: &Path,
    timeout_secs: u32,
) -> Result<CheckReport, WatchdogError> {
    match driver {
        WatchdogDriver::Testing => {
            let w = Watchdog::arm(driver, device, timeout_secs)?;
            let got = w.timeout();
            let disarmed = w.disarm().is_ok();
            Ok(CheckReport {
                driver: "testing".into(),
                device: device.display().to_string(),
                identity: "leasedog testing watchdog".into(),
                firmware_version: 0,
                options: vec![
                    "SETTIMEOUT".into(),
                    "MAGICCLOSE".into(),
                    "KEEPALIVEPING".into(),
                ],
                timeout_wanted: timeout_secs,
                timeout_read_back: got,
                can_set_timeout: true,
                magic_close: true,
                last_boot_by_watchdog: false,
                disarmed,
            })
        }
        WatchdogDriver::Device => {
            let f = open_device(device)?;
            let report = (|| {
                let info = get_support(&f, device)?;
                let mut boot: libc::c_int = 0;
                // SAFETY: the fd is open; boot is written by the kernel.
                let boot_ok = unsafe { wdioc_getbootstatus(f.as_raw_fd(), &mut boot) }.is_ok();
                let got = if info.options & WDIOF_SETTIMEOUT != 0 {
                    set_and_read_timeout(&f, device, timeout_secs)?
                } else {
                    let mut t: libc::c_int = 0;
                    // SAFETY: as above.
                    unsafe { wdioc_gettimeout(f.as_raw_fd(), &mut t) }
                        .map(|_| t.max(0) as u32)
                        .unwrap_or(0)
                };
                Ok::<_, WatchdogError>(CheckReport {
                    driver: "device".into(),
                    device: device.display().to_string(),
                    identity: identity_of(&info),
                    firmware_version: info.firmware_version,
                    options: FLAGS
                        .iter()
                        .filter(|(bit, _)| info.options & bit != 0)
                        .map(|(_, n)| n.to_string())
                        .collect(),
                    timeout_wanted: timeout_secs,
                    timeout_read_back: got,
                    can_set_timeout: info.options & WDIOF_SETTIMEOUT != 0,
                    magic_close: info.options & WDIOF_MAGICCLOSE != 0,
                    last_boot_by_watchdog: boot_ok && (boot as u32) & WDIOF_CARDRESET != 0,
                    disarmed: false,
                })
            })();
            let closed = magic_close(f, device);
            let mut report = report?;
            report.disarmed = closed.is_ok();
            if report.options.iter().any(|o| o == "ALARMONLY") {
                return Err(WatchdogError::AlarmOnly {
                    device: device.into(),
                    identity: report.identity,
                });
            }
            Ok(report)
        }
    }
}

/// Locks the agent's memory so paging cannot stall the loop: pages are
/// locked as they are touched (MCL_ONFAULT), so the resident size stays what
/// is used. Skipped, with the reason, when RLIMIT_MEMLOCK is too small to
/// allow it (locking under a small limit would make later allocations fail):
/// the systemd unit sets LimitMEMLOCK=infinity.
pub fn lock_memory() -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err("getrlimit(RLIMIT_MEMLOCK) failed".into());
    }
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < 256 << 20 {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} KiB; set LimitMEMLOCK=infinity (systemd) to lock memory",
            lim.rlim_cur / 1024
        ));
    }
    // SAFETY: mlockall has no memory-safety preconditions.
    let r = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| l.split_once(' ').unwrap().1.to_string())
            .collect()
    }

    #[test]
    fn testing_driver_logs_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wd");
        let mut w = Watchdog::arm_with(WatchdogDriver::Testing, &p, 4, 0).unwrap();
        assert_eq!(w.timeout(), 4);
        w.keepalive().unwrap();
        w.disarm().unwrap();
        assert_eq!(ops(&p), ["open", "timeout 4", "keepalive", "magic-close"]);
    }

    #[test]
    fn an_open_device_is_adopted_without_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wd");
        let mut w = Watchdog::arm_with(WatchdogDriver::Testing, &p, 4, 0).unwrap();
        let fd = w.fd().unwrap().try_clone_to_owned().unwrap();
        let mut adopted = Watchdog::adopt(WatchdogDriver::Testing, &p, fd).unwrap();
        std::mem::forget(w.backend.take());
        adopted.keepalive().unwrap();
        adopted.disarm().unwrap();
        assert_eq!(
            ops(&p),
            ["open", "timeout 4", "adopt", "keepalive", "magic-close"]
        );
    }

    #[test]
    fn drop_closes_without_the_magic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wd");
        drop(Watchdog::arm_with(WatchdogDriver::Testing, &p, 4, 0).unwrap());
        assert_eq!(ops(&p), ["open", "timeout 4", "close"]);
    }

    #[test]
    fn a_longer_read_back_is_a_failure_to_arm() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wd");
        let e = Watchdog::arm_with(WatchdogDriver::Testing, &p, 4, 1)
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                WatchdogError::TimeoutRejected {
                    wanted: 4,
                    got: 5,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(ops(&p), ["open", "timeout 5", "magic-close"]);
    }

    #[test]
    fn missing_devices_are_named() {
        let e = Watchdog::arm_with(
            WatchdogDriver::Testing,
            Path::new("/nonexistent/dir/wd"),
            4,
            0,
        )
        .err()
        .unwrap();
        assert!(matches!(e, WatchdogError::NotFound(_)), "{e}");
        let e = Watchdog::arm(
            WatchdogDriver::Device,
            Path::new("/dev/nonexistent-watchdog"),
            4,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("does not exist"), "{e}");
        // /dev/null is not a watchdog: the ioctl fails with a clear error.
        let e = Watchdog::arm(WatchdogDriver::Device, Path::new("/dev/null"), 4)
            .err()
            .unwrap();
        assert!(e.to_string().contains("WDIOC_GETSUPPORT"), "{e}");
    }

    #[test]
    fn busy_message_names_the_usual_suspects() {
        let e = open_error(
            Path::new("/dev/watchdog"),
            std::io::Error::from_raw_os_error(libc::EBUSY),
        );
        assert!(e.to_string().contains("RuntimeWatchdogSec"), "{e}");
    }
}
