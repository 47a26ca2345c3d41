//! Stand-ins for the functions the Slurm host process provides, so the
//! plugin's unit tests link. They are never called by a test: the tests
//! exercise pure logic only; the real calls are covered by the integration
//! tests in `tests/`, which load the plugin into real Slurm.
#![allow(clashing_extern_declarations)]

use std::os::raw::{c_int, c_void};

macro_rules! host_fn {
    ($($name:ident),* $(,)?) => {$(
        #[no_mangle]
        extern "C" fn $name(_: *mut c_void, _: *mut c_void, _: *mut c_void, _: c_int) -> c_int {
            unreachable!(concat!(stringify!($name), " is provided by Slurm, not by unit tests"))
        }
    )*};
}

host_fn!(
    spank_context,
    spank_option_register,
    spank_strerror,
    spank_get_item,
    spank_getenv,
    spank_setenv,
    spank_unsetenv,
    spank_job_control_setenv,
    slurm_error,
    slurm_info,
    slurm_verbose,
);
