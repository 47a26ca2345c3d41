//! The per-library decision table and the injection plan built from it:
//! plain data, printed by `shoal abi-check` and carried out by the launcher.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{AbiMode, DeviceSpec, ModuleConfig};

use super::discover::{FoundLib, LibraryIndex};
use super::elf::{self, ElfInfo};
use super::gpu::{device_index, select_gpus, GpuDevice, GpuSelection};
use super::image::{kind_of, EntryKind, ImageFs};
use super::version::{compare_minor, stem, LibVersion, MinorVerdict};
use super::InjectError;

/// The tmpfs the launcher provides inside the container for what the image
/// lacks: `lib/` (added libraries), `bin/` (module programs), `etc/`
/// (the generated loader config and cache).
pub const SHOAL_DIR: &str = "/.shoal";

/// What the ABI check is asked.
pub struct Request<'a> {
    /// Selected modules, in order ([`super::select_modules`]).
    pub modules: Vec<(&'a str, &'a ModuleConfig)>,
    /// `[injection] abi`; a module's own `abi` overrides it.
    pub default_abi: AbiMode,
    /// The job's `CUDA_VISIBLE_DEVICES` on the host.
    pub cuda_visible_devices: Option<&'a str>,
    /// The host's tree, where dependencies of host libraries are looked up
    /// (`DirImage::new("/")`).
    pub host: &'a dyn ImageFs,
    /// The program the job runs, inside the image, when known: copies of a
    /// library in its RUNPATH (an rpath set by MPI compiler wrappers or
    /// Spack) are found and covered as well.
    pub program: Option<&'a Path>,
}

/// What a row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// A host library (listed by the module, or a dependency of one).
    Library,
    /// A host program of the module.
    Program,
    /// A base-runtime library of the image (glibc, libstdc++, libgcc_s)
    /// whose versions were checked; never injected.
    Runtime,
}

/// The decision for one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Bind the host file over the image's file.
    Replace,
    /// Bind the host file into the Shoal directory (the image has none).
    Add,
    /// The image's own copy is used (base runtime).
    UseImage,
    /// Not injectable: the whole module set is refused.
    Refuse,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Replace => "replace",
            Action::Add => "add",
            Action::UseImage => "use image",
            Action::Refuse => "REFUSE",
        })
    }
}

/// One row of the decision table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibraryDecision {
    pub module: String,
    pub kind: ObjectKind,
    /// SONAME (program name for programs).
    pub name: String,
    /// The SONAME or program that needed this library; None when the
    /// module lists it.
    pub needed_by: Option<String>,
    /// The real host file.
    pub host: Option<PathBuf>,
    pub host_version: Option<String>,
    /// The image's real file this row is about (what a bind covers).
    pub image: Option<PathBuf>,
    pub image_version: Option<String>,
    pub action: Action,
    /// Injected, but with a caveat the reason explains (relaxed mode).
    pub warning: bool,
    pub reason: String,
}

/// What a bind mount binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    File,
    Dir,
    Device,
}

/// A bind of a host path into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindMount {
    /// Host path (resolved, no symlinks).
    pub source: PathBuf,
    /// Container path, inside the image's root.
    pub target: PathBuf,
    pub kind: MountKind,
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    /// False when the launcher must create the mount point (under the
    /// Shoal tmpfs, or where the image has no such path).
    pub target_in_image: bool,
    pub why: String,
}

/// One step of the plan, in the order the launcher must carry them out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Mount a fresh tmpfs (mode 0755, nosuid, nodev, owned by the job's
    /// user) at `target`, creating the mount point; later steps bind into
    /// and write under it.
    Tmpfs {
        target: PathBuf,
    },
    Bind(BindMount),
    /// Write `contents` to a new file at container path `path` (on the tmpfs).
    WriteFile {
        path: PathBuf,
        contents: String,
    },
    /// Run `argv` inside the container root as the job's user, before the
    /// task starts; it must exit 0.
    RunInContainer {
        argv: Vec<String>,
        why: String,
    },
    /// Bind a container path over another one (ro, nosuid, nodev).
    BindWithin {
        source: PathBuf,
        target: PathBuf,
        target_in_image: bool,
        why: String,
    },
}

/// An environment change inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum EnvChange {
    Set {
        name: String,
        value: String,
    },
    /// `name=entries[0]:entries[1]:...:$name` (just the entries when unset).
    Prepend {
        name: String,
        entries: Vec<String>,
    },
}

/// What the launcher carries out: only reachable from an assessment with
/// no refusal ([`Assessment::into_plan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InjectionPlan {
    pub steps: Vec<Step>,
    pub env: Vec<EnvChange>,
    /// The GPUs bound, when a module has `gpu_devices`, with the numbering
    /// they have in a /dev holding them alone (the launcher applies it to
    /// its minimal /dev; see `container::add_injection`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<GpuSelection>,
}

/// The decision table and the plan it leads to.
#[derive(Debug, Clone, Serialize)]
pub struct Assessment {
    pub image: String,
    pub modules: Vec<String>,
    pub decisions: Vec<LibraryDecision>,
    /// The plan as it would be; usable only when nothing is refused.
    pub plan: InjectionPlan,
}

impl Assessment {
    pub fn refused(&self) -> impl Iterator<Item = &LibraryDecision> {
        self.decisions.iter().filter(|d| d.action == Action::Refuse)
    }

    /// The plan, or the refusals as one error naming every conflict.
    pub fn into_plan(self) -> Result<InjectionPlan, InjectError> {
        let mut details: Vec<String> = Vec::new();
        for d in self.refused() {
            if !details.contains(&d.reason) {
                details.push(d.reason.clone()); // one per cause, not per copy
            }
        }
        if details.is_empty() {
            Ok(self.plan)
        } else {
            Err(InjectError::Refused {
                image: self.image,
                modules: self.modules.join(","),
                details,
            })
        }
    }
}

/// The base runtime: never injected, only checked. glibc's own libraries
/// must come as one set with the image's loader; libstdc++ and libgcc_s are
/// the compiler runtime every C++ program of the image already uses.
pub fn base_runtime(soname: &str) -> Option<&'static str> {
    const GLIBC: &[&str] = &[
        "libc.so.",
        "libm.so.",
        "libpthread.so.",
        "libdl.so.",
        "librt.so.",
        "libresolv.so.",
        "libutil.so.",
        "libanl.so.",
        "libmvec.so.",
        "libBrokenLocale.so.",
        "libnss_",
        "libthread_db.so.",
        "libc_malloc_debug.so.",
        "ld-linux",
        "ld64.so.",
        "ld.so.",
    ];
    if GLIBC.iter().any(|p| soname.starts_with(p)) {
        Some("glibc")
    } else if soname.starts_with("libstdc++.so.") {
        Some("libstdc++")
    } else if soname.starts_with("libgcc_s.so.") {
        Some("libgcc_s")
    } else {
        None
    }
}

/// Version-name prefix of a runtime, for "defines up to GLIBCXX_3.4.30".
fn runtime_version_prefix(family: &str) -> &'static str {
    match family {
        "libstdc++" => "GLIBCXX",
        "libgcc_s" => "GCC",
        _ => "GLIBC",
    }
}

/// A host file on its way through the check.
struct HostObject {
    real: PathBuf,
    elf: Option<ElfInfo>,
    module: String,
    needed_by: Option<String>,
    mode: AbiMode,
    kind: ObjectKind,
    /// Other SONAMEs the module lists this file under (`libmpi.so.12` for
    /// Debian's `libmpich.so.12`).
    aliases: BTreeSet<String>,
    /// The file name the module lists (programs are bound under it).
    listed_as: Option<String>,
}

impl HostObject {
    fn file_name(&self) -> String {
        self.real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Reads a host file named by a module (or found as a dependency).
fn load_host(path: &Path, program: bool) -> Result<(PathBuf, Option<ElfInfo>), InjectError> {
    let host_err = |message: String| InjectError::Host {
        path: path.to_path_buf(),
        message,
    };
    let real = fs::canonicalize(path).map_err(|e| host_err(e.to_string()))?;
    let bytes = fs::read(&real).map_err(|e| host_err(e.to_string()))?;
    if program && !elf::is_elf(&bytes) {
        return Ok((real, None)); // a script: bound as it is
    }
    let info = elf::parse(&bytes).map_err(|e| host_err(format!("not a usable ELF file ({e})")))?;
    Ok((real, Some(info)))
}

/// Host paths matching a module's glob, sorted; none is a config error.
fn expand(module: &str, field: &str, pattern: &str) -> Result<Vec<PathBuf>, InjectError> {
    let bad =
        |why: String| InjectError::Module(format!("[modules.{module}] {field}: {pattern:?} {why}"));
    let mut out: Vec<PathBuf> = glob::glob(pattern)
        .map_err(|e| bad(format!("is not a valid glob ({e})")))?
        .filter_map(Result::ok)
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(bad(
            "matches no file on this node; fix the site config or install it".into(),
        ));
    }
    Ok(out)
}

struct Builder<'a> {
    image: LibraryIndex<'a>,
    host: LibraryIndex<'a>,
    rows: Vec<LibraryDecision>,
    queue: VecDeque<HostObject>,
    seen_real: BTreeSet<PathBuf>,
    seen_names: BTreeSet<String>,
    runtime_checked: BTreeSet<String>,
}

/// Checks the selected modules against an image and builds the plan.
/// Errors are configuration or I/O problems; ABI refusals are rows of the
/// returned table ([`Assessment::into_plan`] turns them into an error).
pub fn assess(image: &dyn ImageFs, req: &Request) -> Result<Assessment, InjectError> {
    // Both must exist: a missing image root would look like an image without libraries.
    let image_err = |message: String| InjectError::Image {
        image: image.describe(),
        message,
    };
    image
        .list(Path::new("/"))
        .map_err(|e| image_err(format!("cannot list its root: {e}")))?;
    let extra = match req.program {
        Some(program) => super::discover::program_search_dirs(image, program)
            .map_err(|e| image_err(format!("program {e}")))?,
        None => Vec::new(),
    };
    let mut b = Builder {
        image: LibraryIndex::scan_with(image, &extra),
        host: LibraryIndex::scan(req.host),
        rows: Vec::new(),
        queue: VecDeque::new(),
        seen_real: BTreeSet::new(),
        seen_names: BTreeSet::new(),
        runtime_checked: BTreeSet::new(),
    };
    for (name, module) in &req.modules {
        let mode = module.abi.unwrap_or(req.default_abi);
        let mut listed: Vec<(PathBuf, String)> = Vec::new(); // (path, name it is listed under)
        let mut programs = Vec::new();
        for pattern in &module.libraries {
            for path in expand(name, "libraries", pattern)? {
                let file = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                listed.push((path, file));
            }
        }
        for (alias, path) in &module.aliases {
            listed.push((PathBuf::from(path), alias.clone()));
        }
        for pattern in &module.binaries {
            programs.extend(expand(name, "binaries", pattern)?);
        }
        // One object per real file; the other names it is listed under
        // (symlinks like libmpi.so.12 -> libmpich.so.12.2.2) become aliases.
        let first = b.queue.len();
        for (path, listed_as) in listed {
            let (real, elf) = load_host(&path, false)?;
            let soname = elf
                .as_ref()
                .and_then(|e| e.soname.clone())
                .unwrap_or_default();
            let alias = (stem(&listed_as) != stem(&soname) && listed_as.contains(".so."))
                .then_some(listed_as);
            if let Some(obj) = b.queue.iter_mut().skip(first).find(|o| o.real == real) {
                obj.aliases.extend(alias);
                continue;
            }
            b.queue.push_back(HostObject {
                real,
                elf,
                module: name.to_string(),
                needed_by: None,
                mode,
                kind: ObjectKind::Library,
                aliases: alias.into_iter().collect(),
                listed_as: None,
            });
        }
        for path in programs {
            let (real, elf) = load_host(&path, true)?;
            b.queue.push_back(HostObject {
                real,
                elf,
                module: name.to_string(),
                needed_by: None,
                mode,
                kind: ObjectKind::Program,
                aliases: BTreeSet::new(),
                listed_as: path.file_name().map(|n| n.to_string_lossy().into_owned()),
            });
        }
    }
    while let Some(obj) = b.queue.pop_front() {
        b.process(obj)?;
    }
    let plan = b.plan(image, req)?;
    Ok(Assessment {
        image: image.describe(),
        modules: req.modules.iter().map(|(n, _)| n.to_string()).collect(),
        decisions: b.rows,
        plan,
    })
}

impl Builder<'_> {
    fn process(&mut self, obj: HostObject) -> Result<(), InjectError> {
        if !self.seen_real.insert(obj.real.clone()) {
            return Ok(()); // the same file through another glob or link
        }
        let name = match (&obj.kind, obj.elf.as_ref().and_then(|e| e.soname.clone())) {
            (ObjectKind::Library, Some(soname)) => soname,
            // A program keeps the name the module lists (`mpiexec`, not the
            // `mpiexec.hydra` its alternatives link leads to).
            (ObjectKind::Program, _) => obj.listed_as.clone().unwrap_or_else(|| obj.file_name()),
            _ => obj.file_name(),
        };
        if !self.seen_names.insert(name.clone()) {
            return Ok(()); // first module wins for a name
        }
        let first_row = self.rows.len();
        match obj.kind {
            ObjectKind::Program => self.rows.push(LibraryDecision {
                module: obj.module.clone(),
                kind: ObjectKind::Program,
                name: name.clone(),
                needed_by: None,
                host: Some(obj.real.clone()),
                host_version: None,
                image: None,
                image_version: None,
                action: Action::Add,
                warning: false,
                reason: format!("program, bound at {SHOAL_DIR}/bin/{name}, first on PATH"),
            }),
            _ => {
                let rows = self.library_rows(&obj, &name);
                self.rows.extend(rows);
            }
        }
        let Some(info) = obj.elf.as_ref() else {
            return Ok(());
        };
        let mut problems = Vec::new();
        for needed in &info.needed {
            if base_runtime(needed).is_some() {
                if let Err(why) = self.check_runtime(&obj, &name, needed) {
                    problems.push(why);
                }
            } else if !self.seen_names.contains(needed) {
                match self.host_dependency(&obj, needed) {
                    Some(path) => {
                        let (real, elf) = load_host(&path, false)?;
                        self.queue.push_back(HostObject {
                            real,
                            elf,
                            module: obj.module.clone(),
                            needed_by: Some(name.clone()),
                            mode: obj.mode,
                            kind: ObjectKind::Library,
                            aliases: BTreeSet::new(),
                            listed_as: None,
                        });
                    }
                    None => problems.push(format!(
                        "host {} needs {needed}, which is not next to it, in its RUNPATH, or in the host's library directories",
                        obj.real.display()
                    )),
                }
            }
        }
        if !problems.is_empty() {
            // This object's own rows, not the runtime rows its check added.
            for row in self.rows[first_row..]
                .iter_mut()
                .filter(|r| r.kind != ObjectKind::Runtime)
            {
                row.action = Action::Refuse;
                row.warning = false;
                row.reason = problems.join("; ");
            }
        }
        Ok(())
    }

    /// Rows for a host library: replace each image counterpart, add it, or
    /// refuse; then the same for each name the module also lists it under.
    fn library_rows(&self, obj: &HostObject, soname: &str) -> Vec<LibraryDecision> {
        let host_version = LibVersion::new(soname, &obj.file_name());
        if let Some(family) = base_runtime(soname) {
            let mut row = self.row(obj, soname, &host_version, None);
            row.action = Action::Refuse;
            row.reason = format!(
                "host {} ({soname}) is part of the base runtime ({family}), which is never injected: remove it from [modules.{}] libraries",
                obj.real.display(),
                obj.module
            );
            return vec![row];
        }
        let mut rows = self.rows_for_name(obj, soname, &host_version, true);
        for alias in &obj.aliases {
            let mut version = LibVersion::new(alias, &obj.file_name());
            if version.major == host_version.major {
                // Same ABI under another name (MPICH's libmpich.so.12 is
                // libmpi.so.12): the real file's numbers apply.
                version = LibVersion {
                    major: version.major,
                    ..host_version.clone()
                };
            }
            rows.extend(self.rows_for_name(obj, alias, &version, false));
        }
        rows
    }

    /// A row about host object `obj` under `name`, before the decision.
    fn row(
        &self,
        obj: &HostObject,
        name: &str,
        host_version: &LibVersion,
        image: Option<&FoundLib>,
    ) -> LibraryDecision {
        LibraryDecision {
            module: obj.module.clone(),
            kind: ObjectKind::Library,
            name: name.to_string(),
            needed_by: obj.needed_by.clone(),
            host: Some(obj.real.clone()),
            host_version: Some(host_version.to_string()),
            image: image.map(|f| f.real.clone()),
            image_version: image.and_then(|f| {
                let s = f.soname()?;
                Some(LibVersion::new(s, &f.real.file_name()?.to_string_lossy()).to_string())
            }),
            action: Action::Add,
            warning: false,
            reason: String::new(),
        }
    }

    /// Decides `obj` against the image's libraries called `name`. `primary`:
    /// `name` is the SONAME (an image without it gets the library added);
    /// otherwise an alias the module lists, which only replaces or conflicts.
    fn rows_for_name(
        &self,
        obj: &HostObject,
        name: &str,
        host_version: &LibVersion,
        primary: bool,
    ) -> Vec<LibraryDecision> {
        let info = obj.elf.as_ref().expect("libraries are ELF");
        let decided = |image: Option<&FoundLib>, action, warning, reason: String| LibraryDecision {
            action,
            warning,
            reason,
            ..self.row(obj, name, host_version, image)
        };
        // Everything sharing the stem: counterparts, other majors, and
        // unrelated files that merely share the name.
        let mut counterparts = Vec::new();
        let mut other_majors = Vec::new();
        let mut unrelated = Vec::new();
        for found in self.image.by_stem(stem(name)) {
            match &found.elf {
                Err(why) => unrelated.push(format!("{} ({why})", found.path.display())),
                Ok(e) if e.machine != info.machine || e.is_64 != info.is_64 => {
                    unrelated.push(format!("{} (another architecture)", found.path.display()))
                }
                Ok(e) => match e.soname.as_deref() {
                    Some(s) if s == name => counterparts.push(found),
                    Some(s) if stem(s) == stem(name) => other_majors.push(found),
                    Some(s) => {
                        unrelated.push(format!("{} (its SONAME is {s})", found.path.display()))
                    }
                    None => unrelated.push(format!("{} (no SONAME)", found.path.display())),
                },
            }
        }
        let ignored = if unrelated.is_empty() {
            String::new()
        } else {
            format!(
                "; ignored, same name but unrelated: {}",
                unrelated.join(", ")
            )
        };
        if counterparts.is_empty() {
            if let (Some(other), None) = (other_majors.first(), &obj.needed_by) {
                let other_soname = other.soname().unwrap_or("?");
                let host_names = if name == info.soname.as_deref().unwrap_or(name) {
                    name.to_string()
                } else {
                    format!(
                        "{name}, listed by the module for {}",
                        info.soname.as_deref().unwrap_or("?")
                    )
                };
                return vec![decided(
                    Some(other),
                    Action::Refuse,
                    false,
                    format!(
                        "image library {} ({other_soname}) conflicts with host {} ({host_names}): different SONAME major, so programs in the image are linked against {other_soname} and cannot use the host's library (the image was built against another {} implementation or version)",
                        other.path.display(),
                        obj.real.display(),
                        stem(name)
                    ),
                )];
            }
            if !primary {
                return Vec::new();
            }
            let others = if other_majors.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = other_majors
                    .iter()
                    .map(|f| f.path.display().to_string())
                    .collect();
                format!("; the image's other major ({}) stays", list.join(", "))
            };
            return vec![decided(
                None,
                Action::Add,
                false,
                format!("no {name} in the image{others}{ignored}"),
            )];
        }
        counterparts
            .iter()
            .map(|found| {
                let image_info = found.elf.as_ref().expect("counterparts are ELF");
                let image_version =
                    LibVersion::new(name, &found.real.file_name().unwrap_or_default().to_string_lossy());
                let missing: Vec<&str> =
                    image_info.version_defs.difference(&info.version_defs).map(String::as_str).collect();
                if !missing.is_empty() {
                    return decided(
                        Some(found),
                        Action::Refuse,
                        false,
                        format!(
                            "image library {} defines symbol version {} that host {} lacks: the host library is older than the image's",
                            found.real.display(),
                            missing.join(", "),
                            obj.real.display()
                        ),
                    );
                }
                match compare_minor(host_version, &image_version, obj.mode) {
                    MinorVerdict::Match(why) => decided(Some(found), Action::Replace, false, format!("{why}{ignored}")),
                    MinorVerdict::Warn(why) => decided(Some(found), Action::Replace, true, format!("{why}{ignored}")),
                    MinorVerdict::Refuse(why) => decided(
                        Some(found),
                        Action::Refuse,
                        false,
                        format!("host {} vs image {}: {why}", obj.real.display(), found.real.display()),
                    ),
                }
            })
            .collect()
    }

    /// Checks that the image's copy of base-runtime library `needed`
    /// defines every symbol version `obj` needs from it; adds its row once.
    fn check_runtime(&mut self, obj: &HostObject, name: &str, needed: &str) -> Result<(), String> {
        let info = obj.elf.as_ref().expect("checked objects are ELF");
        let family = base_runtime(needed).unwrap_or("glibc");
        let found: Vec<FoundLib> = self
            .image
            .by_soname(needed)
            .into_iter()
            .filter(|f| {
                f.elf
                    .as_ref()
                    .is_ok_and(|e| e.machine == info.machine && e.is_64 == info.is_64)
            })
            .collect();
        let Some(first) = found.first() else {
            return Err(format!(
                "host {} ({name}) needs {needed}, which the image does not have (no {family} of this architecture in its library directories)",
                obj.real.display()
            ));
        };
        let defs: BTreeSet<String> = found
            .iter()
            .flat_map(|f| {
                f.elf
                    .as_ref()
                    .map(|e| e.version_defs.clone())
                    .unwrap_or_default()
            })
            .collect();
        let prefix = runtime_version_prefix(family);
        let newest = elf::newest(&defs, prefix)
            .unwrap_or("no versions")
            .to_string();
        if self.runtime_checked.insert(needed.to_string()) {
            self.rows.push(LibraryDecision {
                module: obj.module.clone(),
                kind: ObjectKind::Runtime,
                name: needed.to_string(),
                needed_by: Some(name.to_string()),
                host: None,
                host_version: None,
                image: Some(first.real.clone()),
                image_version: Some(newest.clone()),
                action: Action::UseImage,
                warning: false,
                reason: format!("base runtime ({family}): never injected; the image's copy defines up to {newest}"),
            });
        }
        let wanted = info.version_needs.get(needed).cloned().unwrap_or_default();
        let missing: Vec<&String> = wanted.difference(&defs).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let missing: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        Err(format!(
            "host {} ({name}) needs {} from {needed}, but the image's {} defines only up to {newest}: the image's {family} is older than the host library needs",
            obj.real.display(),
            missing.join(", "),
            first.real.display()
        ))
    }

    /// Where the host's loader would find `needed` for `obj`: next to it,
    /// in its RUNPATH/RPATH (`$ORIGIN` expanded), then the host's library
    /// directories.
    fn host_dependency(&self, obj: &HostObject, needed: &str) -> Option<PathBuf> {
        let origin = obj.real.parent()?.to_path_buf();
        let mut dirs = vec![origin.clone()];
        if let Some(info) = &obj.elf {
            for p in &info.search_paths {
                dirs.push(super::elf::expand_origin(Path::new(p), &origin));
            }
        }
        dirs.iter()
            .map(|d| d.join(needed))
            .find(|p| p.is_file())
            .or_else(|| {
                let info = obj.elf.as_ref()?;
                self.host
                    .find(needed, info.machine, info.is_64)
                    .map(|f| f.real)
            })
    }

    fn plan(&mut self, image: &dyn ImageFs, req: &Request) -> Result<InjectionPlan, InjectError> {
        let shoal = Path::new(SHOAL_DIR);
        let mut steps = Vec::new();
        let mut env = Vec::new();
        let ro_bind = |source: &Path, target: PathBuf, kind, target_in_image, why: String| {
            Step::Bind(BindMount {
                source: source.to_path_buf(),
                target,
                kind,
                read_only: true,
                nosuid: true,
                nodev: true,
                target_in_image,
                why,
            })
        };
        let adds_library = self
            .rows
            .iter()
            .any(|r| r.kind == ObjectKind::Library && r.action == Action::Add);
        if adds_library && self.image.ldconfig.is_none() {
            for r in self
                .rows
                .iter_mut()
                .filter(|r| r.kind == ObjectKind::Library && r.action == Action::Add)
            {
                r.action = Action::Refuse;
                r.reason = format!(
                    "the image has no {} and no ldconfig to make host {} visible to its loader (it would need LD_LIBRARY_PATH, which the image can override)",
                    r.name,
                    r.host.as_deref().unwrap_or(Path::new("?")).display()
                );
            }
        }
        for r in &self.rows {
            let (Some(host), Action::Replace | Action::Add) = (&r.host, r.action) else {
                continue;
            };
            let step = match (r.kind, &r.image) {
                (ObjectKind::Library, Some(target)) if r.action == Action::Replace => ro_bind(
                    host,
                    target.clone(),
                    MountKind::File,
                    true,
                    format!("host {} replaces the image's ({})", r.name, r.module),
                ),
                (ObjectKind::Program, _) => ro_bind(
                    host,
                    shoal.join("bin").join(&r.name),
                    MountKind::File,
                    false,
                    format!("program of module {}", r.module),
                ),
                _ => ro_bind(
                    host,
                    shoal.join("lib").join(&r.name),
                    MountKind::File,
                    false,
                    format!("host {} added ({})", r.name, r.module),
                ),
            };
            steps.push(step);
        }
        let mut gpu_devices: Vec<GpuDevice> = Vec::new();
        let mut gpus = None;
        let mut bound_devices = BTreeSet::new();
        let mut sets: BTreeMap<String, String> = BTreeMap::new();
        for (name, module) in &req.modules {
            for m in &module.mounts {
                let meta = fs::metadata(&m.source).map_err(|e| InjectError::Host {
                    path: m.source.clone(),
                    message: format!("[modules.{name}] mounts: {e}"),
                })?;
                let source = fs::canonicalize(&m.source).unwrap_or_else(|_| m.source.clone());
                steps.push(Step::Bind(BindMount {
                    source,
                    target: m.target.clone(),
                    kind: if meta.is_dir() {
                        MountKind::Dir
                    } else {
                        MountKind::File
                    },
                    read_only: !m.writable,
                    nosuid: true,
                    nodev: true,
                    target_in_image: kind_of(image, &m.target).is_some(),
                    why: format!("mount of module {name}"),
                }));
            }
            for entry in &module.devices {
                let spec = device_spec(name, "devices", entry)?;
                for dev in expand(name, "devices", &spec.pattern)? {
                    let target = spec.target(&dev);
                    if bound_devices.insert(target.clone()) {
                        steps.push(device_bind(name, &dev, target, image)?);
                    }
                }
            }
            for entry in &module.gpu_devices {
                let spec = device_spec(name, "gpu_devices", entry)?;
                for dev in expand(name, "gpu_devices", &spec.pattern)? {
                    let index = device_index(&dev).ok_or_else(|| {
                        InjectError::Module(format!(
                            "[modules.{name}] gpu_devices: {} does not end with a GPU number; fix the glob in the site config",
                            dev.display()
                        ))
                    })?;
                    if let Some(other) = gpu_devices.iter().find(|g| g.index == index && g.host != dev) {
                        return Err(InjectError::Module(format!(
                            "[modules.{name}] gpu_devices: {} and {} are both GPU {index}; fix the glob in the site config",
                            other.host.display(),
                            dev.display()
                        )));
                    }
                    if !gpu_devices.iter().any(|g| g.host == dev) {
                        let target = spec.target(&dev);
                        gpu_devices.push(GpuDevice { index, host: dev, target });
                    }
                }
            }
            for (k, v) in &module.env {
                sets.insert(k.clone(), v.clone());
            }
            for (k, entries) in &module.env_prepend {
                env.push(EnvChange::Prepend {
                    name: k.clone(),
                    entries: entries.clone(),
                });
            }
        }
        if !gpu_devices.is_empty() {
            let selection = select_gpus(&gpu_devices, req.cuda_visible_devices)?;
            for dev in &selection.devices {
                if bound_devices.insert(dev.target.clone()) {
                    let module = req
                        .modules
                        .iter()
                        .find(|(_, m)| !m.gpu_devices.is_empty())
                        .map(|(n, _)| *n)
                        .unwrap_or("?");
                    steps.push(device_bind(module, &dev.host, dev.target.clone(), image)?);
                }
            }
            // `CUDA_VISIBLE_DEVICES` is not set here: the renumbered list
            // (`selection.cuda_visible_devices`) is right only in a /dev
            // holding the bound GPUs alone, which the launcher decides
            // (`container::add_injection` applies it to a minimal /dev).
            gpus = Some(selection);
        }
        if self
            .rows
            .iter()
            .any(|r| r.kind == ObjectKind::Program && r.action != Action::Refuse)
        {
            env.push(EnvChange::Prepend {
                name: "PATH".into(),
                entries: vec![format!("{SHOAL_DIR}/bin")],
            });
        }
        env.extend(
            sets.into_iter()
                .map(|(name, value)| EnvChange::Set { name, value }),
        );
        if adds_library {
            if let Some(ldconfig) = &self.image.ldconfig {
                let conf = shoal.join("etc/ld.so.conf");
                let cache = shoal.join("etc/ld.so.cache");
                steps.push(Step::WriteFile {
                    path: conf.clone(),
                    contents: format!("{SHOAL_DIR}/lib\ninclude /etc/ld.so.conf\n"),
                });
                steps.push(Step::RunInContainer {
                    argv: vec![
                        ldconfig.display().to_string(),
                        "-X".into(), // no link updates: the image is read-only
                        "-f".into(),
                        conf.display().to_string(),
                        "-C".into(),
                        cache.display().to_string(),
                    ],
                    why: "the image's own ldconfig writes a loader cache that lists the added libraries".into(),
                });
                steps.push(Step::BindWithin {
                    source: cache,
                    target: "/etc/ld.so.cache".into(),
                    target_in_image: kind_of(image, Path::new("/etc/ld.so.cache"))
                        == Some(EntryKind::File),
                    why: "the image's loader reads the generated cache".into(),
                });
            }
        }
        // The tmpfs first, when anything goes under it (added libraries,
        // programs, generated files, a module mount aimed there).
        let under_shoal = |p: &Path| p.starts_with(shoal);
        if steps.iter().any(|s| match s {
            Step::Bind(b) => under_shoal(&b.target),
            Step::WriteFile { path, .. } => under_shoal(path),
            _ => false,
        }) {
            steps.insert(
                0,
                Step::Tmpfs {
                    target: shoal.to_path_buf(),
                },
            );
        }
        Ok(InjectionPlan { steps, env, gpus })
    }
}

fn device_spec(module: &str, field: &str, entry: &str) -> Result<DeviceSpec, InjectError> {
    DeviceSpec::parse(entry).map_err(|e| InjectError::Module(format!("[modules.{module}] {field}: {e}")))
}

/// A host device node bound at `target` (nosuid; device access allowed).
fn device_bind(module: &str, dev: &Path, target: PathBuf, image: &dyn ImageFs) -> Result<Step, InjectError> {
    let meta = fs::metadata(dev).map_err(|e| InjectError::Host {
        path: dev.to_path_buf(),
        message: format!("[modules.{module}] {e}"),
    })?;
    if !meta.file_type().is_char_device() && !meta.file_type().is_block_device() {
        return Err(InjectError::Host {
            path: dev.to_path_buf(),
            message: format!("[modules.{module}] not a device node"),
        });
    }
    Ok(Step::Bind(BindMount {
        source: dev.to_path_buf(),
        target_in_image: kind_of(image, &target).is_some(),
        target,
        kind: MountKind::Device,
        read_only: false,
        nosuid: true,
        nodev: false,
        why: format!("device of module {module}"),
    }))
}

impl fmt::Display for InjectionPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.steps {
            match step {
                Step::Tmpfs { target } => {
                    writeln!(f, "tmpfs  {} (mode 0755,nosuid,nodev)", target.display())?
                }
                Step::Bind(b) => {
                    let mut flags = vec![if b.read_only { "ro" } else { "rw" }];
                    if b.nosuid {
                        flags.push("nosuid");
                    }
                    if b.nodev {
                        flags.push("nodev");
                    }
                    let new = if b.target_in_image {
                        ""
                    } else {
                        ", new mount point"
                    };
                    writeln!(
                        f,
                        "bind   {} -> {} ({}{new})  # {}",
                        b.source.display(),
                        b.target.display(),
                        flags.join(","),
                        b.why
                    )?
                }
                Step::WriteFile { path, contents } => {
                    writeln!(f, "write  {} ({:?})", path.display(), contents)?
                }
                Step::RunInContainer { argv, why } => {
                    writeln!(f, "run    {}  # {why}", argv.join(" "))?
                }
                Step::BindWithin {
                    source,
                    target,
                    why,
                    ..
                } => writeln!(
                    f,
                    "bind   {} -> {} (ro,nosuid,nodev, inside the container)  # {why}",
                    source.display(),
                    target.display()
                )?,
            }
        }
        for change in &self.env {
            match change {
                EnvChange::Set { name, value } => writeln!(f, "env    {name}={value}")?,
                EnvChange::Prepend { name, entries } => {
                    writeln!(f, "env    {name}={}:${name}", entries.join(":"))?
                }
            }
        }
        Ok(())
    }
}

/// The decision table as aligned text columns.
pub fn render_table(decisions: &[LibraryDecision]) -> String {
    let header = [
        "LIBRARY",
        "MODULE",
        "HOST FILE",
        "HOST VER",
        "IMAGE FILE",
        "IMAGE VER",
        "DECISION",
        "REASON",
    ];
    let dash = || "-".to_string();
    let rows: Vec<[String; 8]> = decisions
        .iter()
        .map(|d| {
            let name = match &d.needed_by {
                Some(by) => format!("{} (for {by})", d.name),
                None => d.name.clone(),
            };
            let decision = if d.warning {
                format!("{} (warning)", d.action)
            } else {
                d.action.to_string()
            };
            [
                name,
                d.module.clone(),
                d.host
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(dash),
                d.host_version.clone().unwrap_or_else(dash),
                d.image
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(dash),
                d.image_version.clone().unwrap_or_else(dash),
                decision,
                d.reason.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    };
    line(&header);
    for r in &rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::inject::DirImage;

    #[test]
    fn base_runtime_is_glibc_and_the_compiler_runtime() {
        for glibc in [
            "libc.so.6",
            "libm.so.6",
            "libpthread.so.0",
            "libdl.so.2",
            "librt.so.1",
            "ld-linux-x86-64.so.2",
        ] {
            assert_eq!(base_runtime(glibc), Some("glibc"), "{glibc}");
        }
        assert_eq!(base_runtime("libstdc++.so.6"), Some("libstdc++"));
        assert_eq!(base_runtime("libgcc_s.so.1"), Some("libgcc_s"));
        for other in [
            "libmpich.so.12",
            "libcrypt.so.1",
            "libcuda.so.1",
            "librdmacm.so.1",
        ] {
            assert_eq!(base_runtime(other), None, "{other}");
        }
    }

    /// The host's own zlib against an image tree holding the host's libc:
    /// pure data, no gcc. Skipped where the host lacks them.
    fn zlib_case(with_ldconfig: bool) -> Option<Assessment> {
        let multiarch = Path::new("/usr/lib/x86_64-linux-gnu");
        let (libz, libc) = (multiarch.join("libz.so.1"), multiarch.join("libc.so.6"));
        if !libz.exists() || !libc.exists() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("usr/lib/x86_64-linux-gnu");
        fs::create_dir_all(&lib).unwrap();
        fs::copy(&libc, lib.join("libc.so.6")).unwrap();
        if with_ldconfig {
            fs::create_dir_all(dir.path().join("sbin")).unwrap();
            fs::write(dir.path().join("sbin/ldconfig"), b"").unwrap();
        }
        let text = format!("[modules.z]\nlibraries = [\"{}\"]\n", libz.display());
        let config = Config::parse(&text, Path::new("x")).unwrap();
        let host = DirImage::new("/");
        let req = Request {
            modules: vec![("z", &config.modules["z"])],
            default_abi: AbiMode::Relaxed,
            cuda_visible_devices: None,
            host: &host,
            program: None,
        };
        Some(assess(&DirImage::new(dir.path()), &req).unwrap())
    }

    #[test]
    fn a_missing_library_is_added_through_the_images_ldconfig() {
        let Some(a) = zlib_case(true) else { return };
        let z = a.decisions.iter().find(|d| d.name == "libz.so.1").unwrap();
        assert_eq!((z.action, z.needed_by.as_deref()), (Action::Add, None));
        assert_eq!(z.host_version.as_deref(), Some("1.2.13"));
        let libc = a.decisions.iter().find(|d| d.name == "libc.so.6").unwrap();
        assert_eq!(
            (libc.kind, libc.action),
            (ObjectKind::Runtime, Action::UseImage)
        );
        let plan = a.into_plan().unwrap();
        assert_eq!(
            plan.steps[0],
            Step::Tmpfs {
                target: SHOAL_DIR.into()
            }
        );
        let Step::Bind(bind) = &plan.steps[1] else {
            panic!("{plan}")
        };
        assert_eq!(bind.target, Path::new("/.shoal/lib/libz.so.1"));
        assert!(bind.read_only && bind.nosuid && bind.nodev && !bind.target_in_image);
        let Step::RunInContainer { argv, .. } = &plan.steps[3] else {
            panic!("{plan}")
        };
        assert_eq!(argv[..2], ["/sbin/ldconfig".to_string(), "-X".to_string()]);
        assert!(
            matches!(&plan.steps[4], Step::BindWithin { target, .. } if target == Path::new("/etc/ld.so.cache"))
        );
        assert!(plan.env.is_empty());
    }

    #[test]
    fn without_ldconfig_a_missing_library_is_refused_not_put_on_ld_library_path() {
        let Some(a) = zlib_case(false) else { return };
        let e = a.into_plan().unwrap_err().to_string();
        assert!(e.contains("no libz.so.1 and no ldconfig"), "{e}");
    }

    #[test]
    fn table_has_one_line_per_decision() {
        let Some(a) = zlib_case(true) else { return };
        let table = render_table(&a.decisions);
        assert_eq!(table.lines().count(), 1 + a.decisions.len());
        assert!(table.starts_with("LIBRARY"));
        assert!(table.contains("libc.so.6 (for libz.so.1)"), "{table}");
    }
}
