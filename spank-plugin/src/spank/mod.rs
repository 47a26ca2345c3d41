//! A small safe layer over the SPANK API: the only place in the plugin with
//! `unsafe`. Everything above it works with `Spank`, `Context` and `&str`.
//!
//! The raw functions are provided by the Slurm process that loads the plugin
//! (srun, sbatch, salloc, slurmd, slurmstepd), not by a library we link.

pub mod ffi;
#[cfg(test)]
mod test_host;

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};

/// The Slurm program and phase the plugin was loaded into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// srun, before and while launching a step.
    Local,
    /// sbatch or salloc, at submission.
    Allocator,
    /// slurmstepd, as root, around the user's tasks.
    Remote,
    /// slurmd itself.
    Slurmd,
    /// The job prolog and epilog (run by slurmd as root).
    JobScript,
}

impl Context {
    /// The current context, or `None` when Slurm cannot tell.
    pub fn current() -> Option<Context> {
        // SAFETY: spank_context takes no arguments and only reads a global.
        let ctx = unsafe { ffi::spank_context() };
        use ffi::spank_context as C;
        match ctx {
            C::S_CTX_LOCAL => Some(Context::Local),
            C::S_CTX_ALLOCATOR => Some(Context::Allocator),
            C::S_CTX_REMOTE => Some(Context::Remote),
            C::S_CTX_SLURMD => Some(Context::Slurmd),
            C::S_CTX_JOB_SCRIPT => Some(Context::JobScript),
            _ => None,
        }
    }

    /// How Slurm's documentation names the context.
    pub fn name(self) -> &'static str {
        match self {
            Context::Local => "local (srun)",
            Context::Allocator => "allocator (sbatch/salloc)",
            Context::Remote => "remote (slurmstepd)",
            Context::Slurmd => "slurmd",
            Context::JobScript => "job script (prolog/epilog)",
        }
    }

    /// Whether this context parses user options (srun, sbatch, salloc and
    /// slurmstepd, which receives them from the submitting command).
    pub fn takes_options(self) -> bool {
        matches!(self, Context::Local | Context::Allocator | Context::Remote)
    }
}

/// The handle Slurm passes to every callback.
pub struct Spank(ffi::spank_t);

/// A SPANK call that failed, with Slurm's own reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpankError {
    pub call: &'static str,
    pub reason: String,
}

impl std::fmt::Display for SpankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.call, self.reason)
    }
}

fn check(call: &'static str, rc: ffi::spank_err_t) -> Result<(), SpankError> {
    if rc == ffi::ESPANK_SUCCESS {
        return Ok(());
    }
    // SAFETY: spank_strerror returns a pointer to a static string.
    let reason = unsafe { CStr::from_ptr(ffi::spank_strerror(rc)) }
        .to_string_lossy()
        .into_owned();
    Err(SpankError { call, reason })
}

/// The callback type Slurm calls with an option's value.
pub type OptionCallback = unsafe extern "C" fn(val: c_int, optarg: *const c_char, remote: c_int) -> c_int;

/// A command-line option for srun/sbatch/salloc. Slurm keeps the pointers it
/// is given for the life of the process, so options are `'static`.
pub struct OptionSpec {
    /// Long option name without dashes, NUL-terminated.
    pub name: &'static CStr,
    /// Argument placeholder shown in `--help` (`REF`), or `None` for a flag.
    pub arg: Option<&'static CStr>,
    /// Help text, NUL-terminated.
    pub usage: &'static CStr,
    pub val: c_int,
    pub callback: OptionCallback,
}

impl Spank {
    /// Wraps the handle Slurm passed to a callback.
    pub fn from_raw(raw: ffi::spank_t) -> Spank {
        Spank(raw)
    }

    /// Registers an option; Slurm lists it in `--help` and calls back with
    /// its value (also in slurmstepd, where the value arrives from the
    /// submitting command).
    pub fn register_option(&self, opt: &'static OptionSpec) -> Result<(), SpankError> {
        let raw = Box::leak(Box::new(ffi::spank_option {
            name: opt.name.as_ptr() as *mut c_char,
            arginfo: opt
                .arg
                .map_or(std::ptr::null_mut(), |a| a.as_ptr() as *mut c_char),
            usage: opt.usage.as_ptr() as *mut c_char,
            has_arg: c_int::from(opt.arg.is_some()),
            val: opt.val,
            cb: Some(opt.callback),
        }));
        // SAFETY: `raw` and the strings it points to live for the rest of the
        // process (leaked box, 'static CStrs), as Slurm requires.
        check("spank_option_register", unsafe {
            ffi::spank_option_register(self.0, raw)
        })
    }
}

/// Text for Slurm's log functions: interior NULs would cut it short, so
/// they are shown as `\0`.
fn c_message(msg: &str) -> CString {
    CString::new(msg.replace('\0', "\\0")).expect("NULs replaced")
}

/// Logs through Slurm: to the user's terminal in srun/sbatch/salloc, to the
/// slurmd log in slurmd and slurmstepd.
pub fn log_error(msg: &str) {
    let msg = c_message(msg);
    // SAFETY: "%s" with one valid NUL-terminated string argument.
    unsafe { ffi::slurm_error(c"%s".as_ptr(), msg.as_ptr()) }
}

/// Verbose log line (slurmd log at debug levels, `srun -vv`).
pub fn log_verbose(msg: &str) {
    let msg = c_message(msg);
    // SAFETY: "%s" with one valid NUL-terminated string argument.
    unsafe { ffi::slurm_verbose(c"%s".as_ptr(), msg.as_ptr()) }
}

/// The plugin arguments of a callback (`config=PATH` from plugstack.conf),
/// copied out of Slurm's argv.
///
/// # Safety
/// `argv` must point to `argc` valid NUL-terminated strings, as Slurm
/// guarantees for every SPANK callback.
pub unsafe fn args(argc: c_int, argv: *mut *mut c_char) -> Vec<String> {
    if argv.is_null() || argc <= 0 {
        return Vec::new();
    }
    (0..argc as usize)
        .map(|i| {
            // SAFETY: the caller guarantees argc valid entries.
            let p = unsafe { *argv.add(i) };
            // SAFETY: each entry is a NUL-terminated string.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        })
        .collect()
}

/// An option value as Slurm passed it to an option callback.
///
/// # Safety
/// `optarg` must be null or a NUL-terminated string.
pub unsafe fn optarg(optarg: *const c_char) -> Option<String> {
    if optarg.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    Some(unsafe { CStr::from_ptr(optarg) }.to_string_lossy().into_owned())
}
