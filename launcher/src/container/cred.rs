//! Running as the user: when root builds a container for a user, the paths
//! the user named (the image, bind sources, generated files) are opened
//! with the user's effective ids on this thread, so the kernel checks the
//! user's permissions. One guard for every such place.

use std::fs::File;
use std::io;
use std::path::Path;

use super::model::{Mode, Plan};
use super::sys;

/// This thread's effective ids switched to the user's; root's are back
/// when it is dropped.
pub(crate) struct AsUser {
    saved_groups: Vec<u32>,
}

impl AsUser {
    /// Switches when root acts for a user (privileged mode, uid not 0);
    /// `None` when the caller already is the user.
    pub(crate) fn enter(plan: &Plan) -> io::Result<Option<AsUser>> {
        if plan.mode != Mode::Privileged || plan.identity.uid == 0 {
            return Ok(None);
        }
        let saved_groups: Vec<u32> = nix::unistd::getgroups()?.iter().map(|g| g.as_raw()).collect();
        sys::thread_set_effective(plan.identity.uid, plan.identity.gid, &plan.groups)?;
        Ok(Some(AsUser { saved_groups }))
    }
}

impl Drop for AsUser {
    fn drop(&mut self) {
        // Going on as the user where root was meant would be wrong either
        // way: stop rather than continue with the wrong credentials.
        sys::thread_restore_root(&self.saved_groups).expect("restoring root's ids after acting as the user");
    }
}

/// Runs `f` as the user (see [`AsUser`]).
pub(crate) fn as_user<T>(plan: &Plan, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let _guard = AsUser::enter(plan)?;
    f()
}

/// Opens an image file a user named ([`crate::image::file`]: no FIFO, no
/// device) with that user's `uid`, `gid` and `groups` on this thread when
/// the caller is root (the job prolog acting for the job's user); root's
/// ids are back when it returns.
pub fn open_image_as(path: &Path, links: crate::image::file::Links, uid: u32, gid: u32, groups: &[u32]) -> io::Result<File> {
    let open = || crate::image::file::open_image_file(path, links);
    if !nix::unistd::geteuid().is_root() || uid == 0 {
        return open();
    }
    let saved_groups: Vec<u32> = nix::unistd::getgroups()?.iter().map(|g| g.as_raw()).collect();
    sys::thread_set_effective(uid, gid, groups)?;
    let _back = AsUser { saved_groups };
    open()
}
