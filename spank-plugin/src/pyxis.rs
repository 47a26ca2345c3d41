//! pyxis's `--container-*` options, so scripts written for NVIDIA's pyxis
//! run unchanged under Shoal. Registered only when the site config says
//! `[slurm] pyxis_options = true` (a site may run pyxis beside Shoal while it
//! migrates, and the two must not fight over the names).
//!
//! Each option is translated here into the same [`Request`] Shoal's own
//! options fill, so the rest of the plugin knows only one request. The
//! spellings, `PYXIS_CONTAINER_*` defaults and value syntax are pyxis's
//! (`args.c`); what pyxis accepts and Shoal does not do (an enroot login
//! user in the image, `tmpfs`/`umount` mount sources, mount propagation
//! other than private) is refused with a
//! message that says so, never ignored.
//!
//! Pure: parsing and translation only, unit-tested below.

use std::path::{Path, PathBuf};

use shoal::container::UserMount;

use crate::options::{ContainerName, NameMode, Request};

/// The option ids (the `val` Slurm passes back), above Shoal's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyxisOpt {
    Image = 100,
    Mounts,
    Workdir,
    Name,
    Save,
    MountHome,
    NoMountHome,
    RemapRoot,
    NoRemapRoot,
    Entrypoint,
    NoEntrypoint,
    EntrypointLog,
    Writable,
    Readonly,
    Env,
}

impl PyxisOpt {
    pub const ALL: [PyxisOpt; 15] = [
        PyxisOpt::Image,
        PyxisOpt::Mounts,
        PyxisOpt::Workdir,
        PyxisOpt::Name,
        PyxisOpt::Save,
        PyxisOpt::MountHome,
        PyxisOpt::NoMountHome,
        PyxisOpt::RemapRoot,
        PyxisOpt::NoRemapRoot,
        PyxisOpt::Entrypoint,
        PyxisOpt::NoEntrypoint,
        PyxisOpt::EntrypointLog,
        PyxisOpt::Writable,
        PyxisOpt::Readonly,
        PyxisOpt::Env,
    ];

    pub fn from_val(val: i32) -> Option<PyxisOpt> {
        PyxisOpt::ALL.into_iter().find(|o| *o as i32 == val)
    }

    /// The option as a user types it.
    pub fn flag(self) -> &'static str {
        match self {
            PyxisOpt::Image => "--container-image",
            PyxisOpt::Mounts => "--container-mounts",
            PyxisOpt::Workdir => "--container-workdir",
            PyxisOpt::Name => "--container-name",
            PyxisOpt::Save => "--container-save",
            PyxisOpt::MountHome => "--container-mount-home",
            PyxisOpt::NoMountHome => "--no-container-mount-home",
            PyxisOpt::RemapRoot => "--container-remap-root",
            PyxisOpt::NoRemapRoot => "--no-container-remap-root",
            PyxisOpt::Entrypoint => "--container-entrypoint",
            PyxisOpt::NoEntrypoint => "--no-container-entrypoint",
            PyxisOpt::EntrypointLog => "--container-entrypoint-log",
            PyxisOpt::Writable => "--container-writable",
            PyxisOpt::Readonly => "--container-readonly",
            PyxisOpt::Env => "--container-env",
        }
    }
}

/// Applies one pyxis option to the request. `cwd` resolves relative mount
/// sources (the submitting command's directory, or the task's).
pub fn apply(req: &mut Request, opt: PyxisOpt, value: Option<&str>, cwd: &Path) -> Result<(), String> {
    let flag = opt.flag();
    let arg = || -> Result<&str, String> {
        value.filter(|v| !v.is_empty()).ok_or_else(|| format!("{flag} needs a value"))
    };
    match opt {
        PyxisOpt::Image => {
            let v = arg()?;
            let spec = image(v).map_err(|e| format!("{flag}={v:?}: {e}"))?;
            crate::options::set_image(req, Some(&spec)).map_err(|e| e.replace("--image", flag))
        }
        PyxisOpt::Mounts => {
            let v = arg()?;
            for spec in mounts(v, cwd).map_err(|e| format!("{flag}={v:?}: {e}"))? {
                crate::options::add_mounts(req, &spec, flag)?;
            }
            Ok(())
        }
        PyxisOpt::Workdir => {
            let v = arg()?;
            let dir = shoal::container::normalize_path(Path::new(v))
                .ok_or_else(|| format!("{flag}={v:?}: give an absolute path inside the container, without `..`"))?;
            set_once(&mut req.workdir, dir, flag)
        }
        PyxisOpt::Name => {
            let v = arg()?;
            set_once(&mut req.name, container_name(v).map_err(|e| format!("{flag}={v:?}: {e}"))?, flag)
        }
        PyxisOpt::Save => {
            let v = arg()?;
            if v.ends_with('/') {
                return Err(format!("{flag}={v:?}: names a directory; give the squashfs file to write, e.g. {v}image.sqfs"));
            }
            // Written at step end on the step's first node (`save.rs`);
            // relative to the step's working directory.
            let path = PathBuf::from(v);
            if path.file_name().is_none_or(|n| n == "." || n == "..") {
                return Err(format!("{flag}={v:?}: give the squashfs file to write, e.g. /scratch/image.sqfs"));
            }
            set_once(&mut req.save, path, flag)
        }
        PyxisOpt::MountHome | PyxisOpt::NoMountHome => {
            set_flag(&mut req.mount_home, opt == PyxisOpt::MountHome, "--container-mount-home and --no-container-mount-home")
        }
        PyxisOpt::RemapRoot | PyxisOpt::NoRemapRoot => {
            set_flag(&mut req.remap_root, opt == PyxisOpt::RemapRoot, "--container-remap-root and --no-container-remap-root")
        }
        // Each task then runs ENTRYPOINT with its command (`entrypoint.rs`).
        PyxisOpt::Entrypoint | PyxisOpt::NoEntrypoint => {
            set_flag(&mut req.entrypoint, opt == PyxisOpt::Entrypoint, "--container-entrypoint and --no-container-entrypoint")
        }
        // pyxis runs the entrypoint once, apart, and shows its output only
        // when asked; here it runs as part of each task, its output in the
        // task's: always shown, which is what the option asks for.
        PyxisOpt::EntrypointLog => Ok(()),
        PyxisOpt::Writable | PyxisOpt::Readonly => {
            set_flag(&mut req.writable, opt == PyxisOpt::Writable, "--container-writable and --container-readonly (or --writable)")
        }
        PyxisOpt::Env => {
            let v = arg()?;
            for name in v.split(',') {
                let valid = !name.is_empty()
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!("{flag}={v:?}: {name:?} is not a variable name; give NAME[,NAME...]"));
                }
                if !req.env_names.iter().any(|n| n == name) {
                    req.env_names.push(name.to_string());
                }
            }
            Ok(())
        }
    }
}

fn set_once<T: PartialEq + std::fmt::Debug>(slot: &mut Option<T>, value: T, flag: &str) -> Result<(), String> {
    match slot {
        Some(prev) if *prev != value => Err(format!("{flag} given twice with different values ({prev:?} and {value:?}); give it once")),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// A yes/no option and its `--no-` twin: both on one command line is an error.
pub fn set_flag(slot: &mut Option<bool>, value: bool, pair: &str) -> Result<(), String> {
    match slot {
        Some(prev) if *prev != value => Err(format!("both {pair} were given; give one")),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// pyxis's image syntax, `[USER@][REGISTRY#]IMAGE[:TAG]|PATH` (an enroot
/// URI, `docker://` optional), as Shoal's `--image` value: the `#` that
/// separates an enroot registry becomes `/`.
pub fn image(value: &str) -> Result<String, String> {
    let v = value.trim();
    if v.starts_with('/') || v.starts_with("./") || v.starts_with("../") {
        return Ok(v.to_string());
    }
    for scheme in ["dockerd://", "podman://"] {
        if v.starts_with(scheme) {
            return Err(format!(
                "{scheme} (an image from a local daemon) is not supported by Shoal; push the image to a registry, or `shoal import` a saved archive and give its squashfs path"
            ));
        }
    }
    let rest = v.strip_prefix("docker://").unwrap_or(v);
    let (registry, image) = match rest.split_once('#') {
        Some((r, i)) => (Some(r), i),
        None => (None, rest),
    };
    // `USER@` before the registry (or before the image when there is no
    // `#`); an `@sha256:` after the name is a digest, not a user.
    let user = match registry {
        Some(r) => r.contains('@'),
        None => image.split_once('@').is_some_and(|(_, after)| !after.contains(':') || after.contains('/')),
    };
    if user {
        return Err(
            "an enroot login user (`USER@`) is not supported by Shoal: it takes registry logins from `podman login`/`docker login`; drop `USER@`".into(),
        );
    }
    if image.is_empty() || registry.is_some_and(str::is_empty) {
        return Err("expected [REGISTRY#]IMAGE[:TAG], e.g. nvcr.io#nvidia/pytorch:24.01-py3".into());
    }
    Ok(match registry {
        Some(r) => format!("{r}/{image}"),
        None => image.to_string(),
    })
}

/// pyxis's `--container-mounts` value as Shoal mount specs (`SRC:DST[:ro]`):
/// entries separated by `,`, each `SRC[:DST[:FLAGS]]`, flags joined by `+`.
pub fn mounts(value: &str, cwd: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for entry in value.split(',') {
        let mut parts = entry.splitn(3, ':');
        let src = parts.next().unwrap_or("");
        let dst = parts.next().filter(|d| !d.is_empty()).unwrap_or(src);
        let flags = parts.next().unwrap_or("");
        if src.is_empty() {
            return Err(format!("mount {entry:?}: expected SRC:DST[:FLAGS], e.g. /scratch:/data:ro"));
        }
        if src == "tmpfs" || src == "umount" {
            return Err(format!(
                "mount {entry:?}: `{src}` sources (enroot's) are not supported by Shoal; /tmp, /var/tmp and /run are already private tmpfs in every container"
            ));
        }
        if !(src.starts_with('/') || src.starts_with('.')) {
            return Err(format!("mount {entry:?}: the source must be an absolute or relative path (./dir)"));
        }
        if !dst.starts_with('/') {
            return Err(format!("mount {entry:?}: the target must be an absolute path inside the container"));
        }
        let mut read_only = None;
        for flag in flags.split('+').filter(|f| !f.is_empty()) {
            match flag {
                "ro" | "rw" => {
                    let ro = flag == "ro";
                    if read_only.is_some_and(|prev| prev != ro) {
                        return Err(format!("mount {entry:?}: both ro and rw"));
                    }
                    read_only = Some(ro);
                }
                // Shoal's binds are recursive, nosuid,nodev, and its mount
                // namespace private; missing targets are always created,
                // with the type of the source.
                "rbind" | "private" | "rprivate" | "nosuid" | "nodev" | "x-create=auto" | "x-create=dir" | "x-create=file" => {}
                "slave" | "rslave" | "shared" | "rshared" | "unbindable" | "runbindable" => {
                    return Err(format!(
                        "mount {entry:?}: flag {flag:?} is not supported by Shoal: mount propagation is always private in its containers"
                    ))
                }
                other => {
                    return Err(format!(
                        "mount {entry:?}: flag {other:?} is not supported by Shoal; supported: ro, rw, rbind, private, rprivate, nosuid, nodev, x-create=dir|file|auto"
                    ))
                }
            }
        }
        let spec = format!("{src}:{dst}{}", if read_only == Some(true) { ":ro" } else { "" });
        // The same parser the nodes use, so both sides agree.
        UserMount::parse(&spec, cwd).map_err(|e| e.to_string())?;
        out.push(spec);
    }
    Ok(out)
}

/// `NAME[:auto|create|exec|no_exec]`.
pub fn container_name(value: &str) -> Result<ContainerName, String> {
    let (name, mode) = match value.split_once(':') {
        Some((n, m)) => (n, m),
        None => (value, ""),
    };
    let mode = match mode {
        "" | "auto" => NameMode::Auto,
        "create" => NameMode::Create,
        "exec" => NameMode::Exec,
        "no_exec" => NameMode::NoExec,
        other => return Err(format!("unknown flag {other:?}; use auto, create, exec or no_exec")),
    };
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(format!("container name {name:?}: use up to 64 letters, digits, `.`, `_` and `-`"));
    }
    Ok(ContainerName { name: name.to_string(), mode })
}

/// pyxis's booleans in `PYXIS_CONTAINER_*` variables.
fn parse_bool(var: &str, v: &str) -> Result<bool, String> {
    match v {
        "1" | "true" | "yes" | "y" => Ok(true),
        "0" | "false" | "no" | "n" => Ok(false),
        _ => Err(format!("${var}={v:?}: expected 1/true/yes/y or 0/false/no/n")),
    }
}

/// Fills what the options left unset from the `PYXIS_CONTAINER_*`
/// variables, as pyxis does (an option wins over its variable).
pub fn apply_env_defaults(req: &mut Request, getenv: impl Fn(&str) -> Option<String>, cwd: &Path) -> Result<(), String> {
    let get = |name: &str| getenv(name).filter(|v| !v.is_empty());
    let with_var = |var: &str, r: Result<(), String>| r.map_err(|e| format!("${var}: {e}"));
    if req.image.is_none() && !req.no_image {
        if let Some(v) = get("PYXIS_CONTAINER_IMAGE") {
            with_var("PYXIS_CONTAINER_IMAGE", apply(req, PyxisOpt::Image, Some(&v), cwd))?;
        }
    }
    let simple = [
        ("PYXIS_CONTAINER_MOUNTS", PyxisOpt::Mounts, req.mounts.is_empty()),
        ("PYXIS_CONTAINER_WORKDIR", PyxisOpt::Workdir, req.workdir.is_none()),
        ("PYXIS_CONTAINER_NAME", PyxisOpt::Name, req.name.is_none()),
        ("PYXIS_CONTAINER_SAVE", PyxisOpt::Save, req.save.is_none()),
        ("PYXIS_CONTAINER_ENV", PyxisOpt::Env, req.env_names.is_empty()),
    ];
    for (var, opt, unset) in simple {
        if let (true, Some(v)) = (unset, get(var)) {
            with_var(var, apply(req, opt, Some(&v), cwd))?;
        }
    }
    let flags = [
        ("PYXIS_CONTAINER_MOUNT_HOME", PyxisOpt::MountHome, PyxisOpt::NoMountHome, req.mount_home.is_none()),
        ("PYXIS_CONTAINER_REMAP_ROOT", PyxisOpt::RemapRoot, PyxisOpt::NoRemapRoot, req.remap_root.is_none()),
        ("PYXIS_CONTAINER_ENTRYPOINT", PyxisOpt::Entrypoint, PyxisOpt::NoEntrypoint, req.entrypoint.is_none()),
        ("PYXIS_CONTAINER_WRITABLE", PyxisOpt::Writable, PyxisOpt::Readonly, req.writable.is_none()),
        ("PYXIS_CONTAINER_READONLY", PyxisOpt::Readonly, PyxisOpt::Writable, req.writable.is_none()),
    ];
    for (var, yes, no, unset) in flags {
        if let (true, Some(v)) = (unset, get(var)) {
            let opt = if parse_bool(var, &v)? { yes } else { no };
            with_var(var, apply(req, opt, None, cwd))?;
        }
    }
    if let Some(v) = get("PYXIS_CONTAINER_ENTRYPOINT_LOG") {
        if parse_bool("PYXIS_CONTAINER_ENTRYPOINT_LOG", &v)? {
            with_var("PYXIS_CONTAINER_ENTRYPOINT_LOG", apply(req, PyxisOpt::EntrypointLog, None, cwd))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cwd() -> &'static Path {
        Path::new("/home/alice/run")
    }

    #[test]
    fn images_in_pyxis_syntax() {
        assert_eq!(image("ubuntu:22.04").unwrap(), "ubuntu:22.04");
        assert_eq!(image("nvcr.io#nvidia/pytorch:24.01-py3").unwrap(), "nvcr.io/nvidia/pytorch:24.01-py3");
        assert_eq!(image("docker://127.0.0.1:5443#shoal/busybox:1").unwrap(), "127.0.0.1:5443/shoal/busybox:1");
        assert_eq!(image("/scratch/img.sqsh").unwrap(), "/scratch/img.sqsh");
        assert_eq!(image("./img.sqsh").unwrap(), "./img.sqsh");
        let d = format!("alpine@sha256:{}", "a".repeat(64));
        assert_eq!(image(&d).unwrap(), d);
        for bad in ["bob@nvcr.io#nvidia/pytorch:1", "bob@ubuntu", "dockerd://ubuntu", "podman://x", "nvcr.io#", "#x"] {
            assert!(image(bad).is_err(), "{bad}");
        }
        assert!(image("bob@nvcr.io#x").unwrap_err().contains("podman login"));
    }

    #[test]
    fn mounts_translate_flags_and_refuse_what_shoal_does_not_do() {
        let m = mounts("/scratch:/data:ro+rprivate,/a:/b:x-create=dir+rbind,./in:/in,/etc/hosts", cwd()).unwrap();
        assert_eq!(m, ["/scratch:/data:ro", "/a:/b", "./in:/in", "/etc/hosts:/etc/hosts"]);
        for (bad, says) in [
            ("tmpfs:/x", "tmpfs"),
            ("umount:/x", "umount"),
            ("/a:/b:rslave", "propagation"),
            ("/a:/b:noexec", "not supported"),
            ("/a:/b:bogus", "\"bogus\""),
            ("/a:/b:ro+rw", "both ro and rw"),
            ("/a:b", "absolute path"),
            ("relative:/b", "source"),
            (":/b", "expected"),
        ] {
            let e = mounts(bad, cwd()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn options_fill_the_request_and_conflicts_are_errors() {
        let mut r = Request::default();
        apply(&mut r, PyxisOpt::Image, Some("127.0.0.1:5443#shoal/busybox:1"), cwd()).unwrap();
        assert_eq!(r.image.as_ref().unwrap().to_string(), "127.0.0.1:5443/shoal/busybox:1");
        // Slurm replays options: the same value again is fine.
        apply(&mut r, PyxisOpt::Image, Some("127.0.0.1:5443#shoal/busybox:1"), cwd()).unwrap();
        let e = apply(&mut r, PyxisOpt::Image, Some("debian:12"), cwd()).unwrap_err();
        assert!(e.contains("--container-image given twice"), "{e}");
        apply(&mut r, PyxisOpt::Mounts, Some("/s:/d:ro"), cwd()).unwrap();
        assert_eq!(r.mounts, ["/s:/d:ro"]);
        apply(&mut r, PyxisOpt::Workdir, Some("/work/./x"), cwd()).unwrap();
        assert_eq!(r.workdir.as_deref(), Some(Path::new("/work/x")));
        assert!(apply(&mut r, PyxisOpt::Workdir, Some("rel"), cwd()).is_err());
        apply(&mut r, PyxisOpt::Name, Some("train:exec"), cwd()).unwrap();
        assert_eq!(r.name, Some(ContainerName { name: "train".into(), mode: NameMode::Exec }));
        assert!(apply(&mut r, PyxisOpt::Name, Some("other"), cwd()).is_err());
        assert!(container_name("x:bogus").unwrap_err().contains("bogus"));
        assert!(container_name("../x").is_err());
        assert_eq!(container_name("a").unwrap().mode, NameMode::Auto);
        apply(&mut r, PyxisOpt::RemapRoot, None, cwd()).unwrap();
        let e = apply(&mut r, PyxisOpt::NoRemapRoot, None, cwd()).unwrap_err();
        assert!(e.contains("both --container-remap-root and --no-container-remap-root"), "{e}");
        apply(&mut r, PyxisOpt::Readonly, None, cwd()).unwrap();
        assert_eq!(r.writable, Some(false));
        assert!(apply(&mut r, PyxisOpt::Writable, None, cwd()).is_err());
        assert!(apply(&mut r, PyxisOpt::Save, Some("/scratch/"), cwd()).unwrap_err().contains("directory"));
        apply(&mut r, PyxisOpt::Save, Some("/scratch/x.sqsh"), cwd()).unwrap();
        assert_eq!(r.save.as_deref(), Some(Path::new("/scratch/x.sqsh")));
        assert!(apply(&mut r, PyxisOpt::Save, Some("/scratch/y.sqsh"), cwd()).unwrap_err().contains("twice"));
        assert!(apply(&mut r, PyxisOpt::Save, Some("/scratch/.."), cwd()).is_err());
        apply(&mut r, PyxisOpt::NoEntrypoint, None, cwd()).unwrap();
        assert_eq!(r.entrypoint, Some(false));
        assert!(apply(&mut r, PyxisOpt::Entrypoint, None, cwd()).unwrap_err().contains("were given; give one"));
        apply(&mut r, PyxisOpt::Env, Some("A,B_2"), cwd()).unwrap();
        assert_eq!(r.env_names, ["A", "B_2"]);
        assert!(apply(&mut r, PyxisOpt::Env, Some("A,=x"), cwd()).is_err());
        apply(&mut r, PyxisOpt::EntrypointLog, None, cwd()).unwrap();
        assert!(apply(&mut r, PyxisOpt::Image, Some(""), cwd()).unwrap_err().contains("needs a value"));
    }

    #[test]
    fn environment_defaults_as_pyxis() {
        let env = |k: &str| {
            match k {
                "PYXIS_CONTAINER_IMAGE" => Some("debian:12"),
                "PYXIS_CONTAINER_MOUNTS" => Some("/s:/d:ro"),
                "PYXIS_CONTAINER_WORKDIR" => Some("/w"),
                "PYXIS_CONTAINER_NAME" => Some("n:no_exec"),
                "PYXIS_CONTAINER_REMAP_ROOT" => Some("yes"),
                "PYXIS_CONTAINER_READONLY" => Some("0"),
                "PYXIS_CONTAINER_MOUNT_HOME" => Some("false"),
                _ => None,
            }
            .map(str::to_string)
        };
        let mut r = Request::default();
        apply(&mut r, PyxisOpt::Workdir, Some("/given"), cwd()).unwrap();
        apply_env_defaults(&mut r, env, cwd()).unwrap();
        assert_eq!(r.image.as_ref().unwrap().to_string(), "docker.io/library/debian:12");
        assert_eq!(r.mounts, ["/s:/d:ro"]);
        assert_eq!(r.workdir.as_deref(), Some(Path::new("/given")), "the option wins over the variable");
        assert_eq!(r.name.as_ref().unwrap().mode, NameMode::NoExec);
        assert_eq!((r.remap_root, r.writable, r.mount_home), (Some(true), Some(true), Some(false)));

        let e = apply_env_defaults(&mut Request::default(), |k| (k == "PYXIS_CONTAINER_WRITABLE").then(|| "maybe".into()), cwd()).unwrap_err();
        assert!(e.contains("$PYXIS_CONTAINER_WRITABLE") && e.contains("maybe"), "{e}");
        let e = apply_env_defaults(&mut Request::default(), |k| (k == "PYXIS_CONTAINER_MOUNTS").then(|| "/a:/b:rshared".into()), cwd()).unwrap_err();
        assert!(e.starts_with("$PYXIS_CONTAINER_MOUNTS: --container-mounts="), "{e}");
        let mut r = Request { no_image: true, ..Request::default() };
        apply_env_defaults(&mut r, env, cwd()).unwrap();
        assert!(r.image.is_none());
    }
}
