//! The per-library decision table: every host library and program of the
//! selected modules, and their dependencies, against the image's copies.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use crate::config::AbiMode;

use super::discover::{FoundLib, LibraryIndex};
use super::elf::{self, ElfInfo};
use super::image::{glob, kind_of, resolve, EntryKind, ImageFs};
use super::plan::{Action, Assessment, LibraryDecision, ObjectKind, Request, SHOAL_DIR};
use super::runtime::{base_runtime, runtime_version_prefix};
use super::version::{compare_minor, stem, LibVersion, MinorVerdict};
use super::InjectError;

/// A host file on its way through the check.
pub(super) struct HostObject {
    pub(super) real: PathBuf,
    pub(super) elf: Option<ElfInfo>,
    pub(super) module: String,
    pub(super) needed_by: Option<String>,
    pub(super) mode: AbiMode,
    pub(super) kind: ObjectKind,
    /// Other SONAMEs the module lists this file under (`libmpi.so.12` for
    /// Debian's `libmpich.so.12`).
    pub(super) aliases: BTreeSet<String>,
    /// The file name the module lists (programs are bound under it).
    pub(super) listed_as: Option<String>,
}

impl HostObject {
    pub(super) fn file_name(&self) -> String {
        self.real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Reads a host file named by a module (or found as a dependency).
pub(super) fn load_host(
    host: &dyn ImageFs,
    path: &Path,
    program: bool,
) -> Result<(PathBuf, Option<ElfInfo>), InjectError> {
    let host_err = |message: String| InjectError::Host {
        path: path.to_path_buf(),
        message,
    };
    let real = resolve(host, path).map_err(|e| host_err(e.to_string()))?;
    let bytes = host.read(&real).map_err(|e| host_err(e.to_string()))?;
    if program && !elf::is_elf(&bytes) {
        return Ok((real, None)); // a script: bound as it is
    }
    let info = elf::parse(&bytes).map_err(|e| host_err(format!("not a usable ELF file ({e})")))?;
    Ok((real, Some(info)))
}

/// Host paths matching a module's glob, sorted; none is a config error.
pub(super) fn expand(
    host: &dyn ImageFs,
    module: &str,
    field: &str,
    pattern: &str,
) -> Result<Vec<PathBuf>, InjectError> {
    let bad =
        |why: String| InjectError::Module(format!("[modules.{module}] {field}: {pattern:?} {why}"));
    let out = glob(host, pattern).map_err(|e| bad(format!("is not a valid glob ({e})")))?;
    if out.is_empty() {
        return Err(bad(
            "matches no file on this node; fix the site config or install it".into(),
        ));
    }
    Ok(out)
}

pub(super) struct Builder<'a> {
    /// The host's tree ([`Request::host`]): every host read goes through it.
    pub(super) host_fs: &'a dyn ImageFs,
    pub(super) image: LibraryIndex<'a>,
    pub(super) host: LibraryIndex<'a>,
    pub(super) rows: Vec<LibraryDecision>,
    pub(super) queue: VecDeque<HostObject>,
    pub(super) seen_real: BTreeSet<PathBuf>,
    pub(super) seen_names: BTreeSet<String>,
    pub(super) runtime_checked: BTreeSet<String>,
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
        host_fs: req.host,
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
            for path in expand(req.host, name, "libraries", pattern)? {
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
            programs.extend(expand(req.host, name, "binaries", pattern)?);
        }
        // One object per real file; the other names it is listed under
        // (symlinks like libmpi.so.12 -> libmpich.so.12.2.2) become aliases.
        let first = b.queue.len();
        for (path, listed_as) in listed {
            let (real, elf) = load_host(req.host, &path, false)?;
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
            let (real, elf) = load_host(req.host, &path, true)?;
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
                        let (real, elf) = load_host(self.host_fs, &path, false)?;
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
            .find(|p| kind_of(self.host_fs, p) == Some(EntryKind::File))
            .or_else(|| {
                let info = obj.elf.as_ref()?;
                self.host
                    .find(needed, info.machine, info.is_64)
                    .map(|f| f.real)
            })
    }
}

impl Builder<'_> {
    /// Checks that the image's copy of base-runtime library `needed`
    /// defines every symbol version `obj` needs from it; adds its row once.
    pub(super) fn check_runtime(&mut self, obj: &HostObject, name: &str, needed: &str) -> Result<(), String> {
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
}
