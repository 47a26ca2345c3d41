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

/// Facts about the job and step, read with `spank_get_item`.
impl Spank {
    fn item_u32(&self, item: ffi::spank_item_t, call: &'static str) -> Result<u32, SpankError> {
        let mut value: u32 = 0;
        // SAFETY: for the items passed here spank.h documents a single
        // `uint32_t *` (uid_t and gid_t are u32 on Linux) out-argument.
        check(call, unsafe { ffi::spank_get_item(self.0, item, &mut value as *mut u32) })?;
        Ok(value)
    }

    pub fn job_id(&self) -> Result<u32, SpankError> {
        self.item_u32(ffi::spank_item::S_JOB_ID, "spank_get_item(S_JOB_ID)")
    }

    pub fn step_id(&self) -> Result<u32, SpankError> {
        self.item_u32(ffi::spank_item::S_JOB_STEPID, "spank_get_item(S_JOB_STEPID)")
    }

    pub fn uid(&self) -> Result<u32, SpankError> {
        self.item_u32(ffi::spank_item::S_JOB_UID, "spank_get_item(S_JOB_UID)")
    }

    pub fn gid(&self) -> Result<u32, SpankError> {
        self.item_u32(ffi::spank_item::S_JOB_GID, "spank_get_item(S_JOB_GID)")
    }

    /// This node's index in the step (0: the step's first node).
    pub fn node_id(&self) -> Result<u32, SpankError> {
        self.item_u32(ffi::spank_item::S_JOB_NODEID, "spank_get_item(S_JOB_NODEID)")
    }

    /// This task's index among the step's tasks on this node (task context).
    pub fn local_task_id(&self) -> Result<u32, SpankError> {
        self.item_u32(ffi::spank_item::S_TASK_ID, "spank_get_item(S_TASK_ID)")
    }

    /// Number of this step's tasks on this node: exactly the number of
    /// processes that will share the node's container.
    pub fn local_task_count(&self) -> Result<u32, SpankError> {
        self.item_u32(ffi::spank_item::S_JOB_LOCAL_TASK_COUNT, "spank_get_item(S_JOB_LOCAL_TASK_COUNT)")
    }

    /// Supplementary groups of the job's user, from the job credential.
    pub fn supplementary_gids(&self) -> Result<Vec<u32>, SpankError> {
        let mut gids: *mut u32 = std::ptr::null_mut();
        let mut n: c_int = 0;
        // SAFETY: S_JOB_SUPPLEMENTARY_GIDS takes (gid_t **, int *); Slurm
        // keeps ownership of the array, which we copy out at once.
        check("spank_get_item(S_JOB_SUPPLEMENTARY_GIDS)", unsafe {
            ffi::spank_get_item(
                self.0,
                ffi::spank_item::S_JOB_SUPPLEMENTARY_GIDS,
                &mut gids as *mut *mut u32,
                &mut n as *mut c_int,
            )
        })?;
        if gids.is_null() || n <= 0 {
            return Ok(Vec::new());
        }
        // SAFETY: Slurm returned an array of n gids.
        Ok(unsafe { std::slice::from_raw_parts(gids, n as usize) }.to_vec())
    }

    /// The step's command line (for a batch step, the script path).
    pub fn argv(&self) -> Result<Vec<String>, SpankError> {
        let mut argc: c_int = 0;
        let mut argv: *mut *mut c_char = std::ptr::null_mut();
        // SAFETY: S_JOB_ARGV takes (int *, char ***); the strings stay
        // owned by Slurm and are copied here.
        check("spank_get_item(S_JOB_ARGV)", unsafe {
            ffi::spank_get_item(
                self.0,
                ffi::spank_item::S_JOB_ARGV,
                &mut argc as *mut c_int,
                &mut argv as *mut *mut *mut c_char,
            )
        })?;
        // SAFETY: Slurm returned argc valid strings.
        Ok(unsafe { args(argc, argv) })
    }

    /// Replaces the program the task will exec (`argv[0]`, task context),
    /// keeping its arguments; returns the one it replaces. Slurm execs
    /// `argv[0]` right after the task callbacks and never frees it, so the
    /// new string is leaked on purpose.
    pub fn replace_argv0(&self, program: CString) -> Result<String, SpankError> {
        let mut argc: c_int = 0;
        let mut argv: *mut *mut c_char = std::ptr::null_mut();
        // SAFETY: as in `argv`; in a task the array is the task's own.
        check("spank_get_item(S_JOB_ARGV)", unsafe {
            ffi::spank_get_item(
                self.0,
                ffi::spank_item::S_JOB_ARGV,
                &mut argc as *mut c_int,
                &mut argv as *mut *mut *mut c_char,
            )
        })?;
        if argv.is_null() || argc < 1 {
            return Err(SpankError { call: "spank_get_item(S_JOB_ARGV)", reason: "the task has no command".into() });
        }
        // SAFETY: argc >= 1 valid, NUL-terminated entries. The old string
        // stays Slurm's (not freed here); the new one lives until exec.
        unsafe {
            let old = CStr::from_ptr(*argv).to_string_lossy().into_owned();
            *argv = program.into_raw();
            Ok(old)
        }
    }

    /// The environment the task will be started with (remote context).
    pub fn job_env(&self) -> Result<Vec<(String, String)>, SpankError> {
        let mut env: *mut *mut c_char = std::ptr::null_mut();
        // SAFETY: S_JOB_ENV takes one `char ***`; Slurm keeps ownership of
        // the NULL-terminated array, which is copied here.
        check("spank_get_item(S_JOB_ENV)", unsafe {
            ffi::spank_get_item(self.0, ffi::spank_item::S_JOB_ENV, &mut env as *mut *mut *mut c_char)
        })?;
        let mut out = Vec::new();
        if env.is_null() {
            return Ok(out);
        }
        for i in 0.. {
            // SAFETY: the array is NULL-terminated; every entry before the
            // terminator is a NUL-terminated `NAME=VALUE` string.
            let p = unsafe { *env.add(i) };
            if p.is_null() {
                break;
            }
            // SAFETY: as above.
            let kv = unsafe { CStr::from_ptr(p) }.to_string_lossy();
            if let Some((k, v)) = kv.split_once('=') {
                out.push((k.to_string(), v.to_string()));
            }
        }
        Ok(out)
    }

    /// Reads a variable of the job's environment (remote context) or of the
    /// submitting command's environment (local and allocator contexts).
    pub fn getenv(&self, name: &str) -> Option<String> {
        let name = CString::new(name).ok()?;
        let mut buf = vec![0u8; 16384];
        // SAFETY: buf is writable for its full length, which we pass.
        let rc = unsafe {
            ffi::spank_getenv(self.0, name.as_ptr(), buf.as_mut_ptr() as *mut c_char, buf.len() as c_int)
        };
        (rc == ffi::ESPANK_SUCCESS).then(|| c_buf_to_string(&buf))
    }

    /// Sets a variable in the job's environment (remote context: the tasks';
    /// local and allocator contexts: the job or step being submitted).
    pub fn setenv(&self, name: &str, value: &str) -> Result<(), SpankError> {
        let (name, value) = (c_text(name), c_text(value));
        // SAFETY: both are valid NUL-terminated strings; Slurm copies them.
        check("spank_setenv", unsafe { ffi::spank_setenv(self.0, name.as_ptr(), value.as_ptr(), 1) })
    }

    pub fn unsetenv(&self, name: &str) -> Result<(), SpankError> {
        let name = c_text(name);
        // SAFETY: a valid NUL-terminated string.
        check("spank_unsetenv", unsafe { ffi::spank_unsetenv(self.0, name.as_ptr()) })
    }

    /// Sets a variable in the job control environment, which Slurm hands to
    /// the job prolog and epilog as `SPANK_<name>` (allocator and local).
    pub fn job_control_setenv(&self, name: &str, value: &str) -> Result<(), SpankError> {
        let (name, value) = (c_text(name), c_text(value));
        // SAFETY: both are valid NUL-terminated strings; Slurm copies them.
        check("spank_job_control_setenv", unsafe {
            ffi::spank_job_control_setenv(self.0, name.as_ptr(), value.as_ptr(), 1)
        })
    }
}

fn c_buf_to_string(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn c_text(s: &str) -> CString {
    CString::new(s.replace('\0', "")).expect("NULs removed")
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

/// Informational log line (the slurmd log at its default level).
pub fn log_info(msg: &str) {
    let msg = c_message(msg);
    // SAFETY: "%s" with one valid NUL-terminated string argument.
    unsafe { ffi::slurm_info(c"%s".as_ptr(), msg.as_ptr()) }
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
