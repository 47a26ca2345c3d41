//! What a node offers an image (CPU, GPUs) and what a job brings (the MPI
//! of its modules): the facts selection compares index entries against.
//!
//! Detection reads `/proc/cpuinfo` and `/sys/bus/pci/devices` once and is
//! cached (in the process, and in a file the caller names, keyed by the
//! boot id so a reboot with a new CPU or GPU detects again). The site's
//! `[nodes."NAME"]` tables override any fact per node, on top of what was
//! detected, every time: a changed config never waits for a cache.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cpu::{self, Cpu};
use crate::config::{Config, NodeOverride};

/// One GPU on the PCI bus (class 0300 VGA or 0302 3D controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// `nvidia`, `amd`, `intel`, or the PCI vendor id (`0x1a03`).
    pub vendor: String,
    /// PCI address (`0000:3b:00.0`); empty for a GPU named in config.
    #[serde(default)]
    pub address: String,
    /// The NVIDIA driver version (`535.104.05`), when loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The highest CUDA version that driver runs (`12.2`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda: Option<String>,
}

/// An MPI library of the job's modules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mpi {
    /// `mpich`, `openmpi`, `intel-mpi`, `mvapich2`, `cray-mpich`, ...
    pub implementation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `mpich` (libmpi.so.12 ABI) or `openmpi` (libmpi.so.40).
    pub abi: String,
}

/// The facts of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCapabilities {
    /// The Slurm node name (or the host name outside Slurm).
    pub node: String,
    pub os: String,
    pub cpu: Cpu,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    /// Facts the site config set rather than detection (`cpu.target`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overridden: Vec<String>,
}

/// What the job asks for besides the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    /// The MPI of the job's modules, if any module is an MPI.
    pub mpi: Option<Mpi>,
}

/// The ABI family of an MPI implementation name, `None` when unknown.
pub fn abi_family(implementation: &str) -> Option<&'static str> {
    let i = implementation.to_ascii_lowercase().replace(['_', ' '], "-");
    match i.as_str() {
        "mpich" | "intel-mpi" | "intelmpi" | "impi" | "mvapich" | "mvapich2" | "cray-mpich"
        | "parastation" | "psmpi" | "mpich-abi" => Some("mpich"),
        "openmpi" | "open-mpi" | "ompi" => Some("openmpi"),
        _ => None,
    }
}

/// The MPI an MPI library's SONAME stands for: `libmpich.so.12` and
/// `libmpi.so.12` are the MPICH ABI, `libmpi.so.40` Open MPI's.
pub fn mpi_from_soname(soname: &str) -> Option<Mpi> {
    let (implementation, abi) = if soname.starts_with("libmpich.so.12") || soname.starts_with("libmpi.so.12") {
        ("mpich", "mpich")
    } else if soname.starts_with("libmpi.so.40") {
        ("openmpi", "openmpi")
    } else {
        return None;
    };
    Some(Mpi {
        implementation: implementation.into(),
        version: None,
        abi: abi.into(),
    })
}

/// The MPI version a library prints in `MPI_Get_library_version`
/// (`MPICH Version:\t4.0.2`, `Open MPI v4.1.4`), read from its bytes.
pub fn mpi_version_in(bytes: &[u8], abi: &str) -> Option<String> {
    let marker: &[&[u8]] = match abi {
        "mpich" => &[b"MPICH Version:", b"MPICH_VERSION="],
        _ => &[b"Open MPI v"],
    };
    for m in marker {
        if let Some(at) = bytes.windows(m.len()).position(|w| w == *m) {
            let rest = &bytes[at + m.len()..];
            let v: String = rest
                .iter()
                .skip_while(|b| b.is_ascii_whitespace())
                .take_while(|b| b.is_ascii_digit() || **b == b'.')
                .map(|b| *b as char)
                .collect();
            if !v.is_empty() {
                return Some(v.trim_end_matches('.').to_string());
            }
        }
    }
    None
}

/// The MPI of the job's modules: the first module library whose SONAME
/// is an MPI's. The module's `mpi_*` keys win over what the file says.
pub fn job_mpi(config: &Config, modules: &[String]) -> Option<Mpi> {
    for name in modules {
        let Some(module) = config.modules.get(name) else {
            continue;
        };
        let mut found: Option<Mpi> = None;
        for pattern in &module.libraries {
            let paths = glob::glob(pattern).into_iter().flatten().flatten();
            for path in paths {
                let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                let Some(mut mpi) = mpi_from_soname(file) else {
                    continue;
                };
                if let Ok(bytes) = std::fs::read(&path) {
                    mpi.version = mpi_version_in(&bytes, &mpi.abi);
                }
                found = Some(mpi);
                break;
            }
            if found.is_some() {
                break;
            }
        }
        if let Some(implementation) = &module.mpi_implementation {
            let abi = abi_family(implementation).unwrap_or("unknown").to_string();
            let f = found.get_or_insert(Mpi {
                implementation: implementation.clone(),
                version: None,
                abi,
            });
            f.implementation = implementation.clone();
            f.abi = abi_family(implementation).map_or_else(|| f.abi.clone(), str::to_string);
        }
        if let Some(v) = &module.mpi_version {
            if let Some(f) = found.as_mut() {
                f.version = Some(v.clone());
            }
        }
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The GPUs of a `/sys/bus/pci/devices`-like directory, with the NVIDIA
/// driver version from `nvidia_version` (`/proc/driver/nvidia/version`'s
/// text) and its CUDA version from `cuda_of_driver`.
pub fn gpus_in(pci: &Path, nvidia_version: Option<&str>) -> Vec<Gpu> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(pci) else {
        return out;
    };
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    dirs.sort();
    let driver = nvidia_version.and_then(nvidia_driver_version);
    for d in dirs {
        let read = |f: &str| {
            std::fs::read_to_string(d.join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let Some(class) = read("class") else { continue };
        // 0x030000 VGA, 0x030200 3D controller (compute GPUs).
        if !(class.starts_with("0x0300") || class.starts_with("0x0302")) {
            continue;
        }
        let vendor_id = read("vendor").unwrap_or_default();
        let vendor = match vendor_id.as_str() {
            "0x10de" => "nvidia".to_string(),
            "0x1002" => "amd".to_string(),
            "0x8086" => "intel".to_string(),
            other => other.to_string(),
        };
        let (driver, cuda) = if vendor == "nvidia" {
            (driver.clone(), driver.as_deref().and_then(cuda_of_driver))
        } else {
            (None, None)
        };
        let address = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(Gpu {
            vendor,
            address,
            driver,
            cuda,
        });
    }
    // Emulated VGA of a VM (QEMU's 0x1234, Cirrus, VMware, Matrox BMCs,
    // ASPEED) is no GPU for computing.
    out.retain(|g| {
        !["0x1234", "0x1013", "0x15ad", "0x102b", "0x1a03"].contains(&g.vendor.as_str())
    });
    out
}

/// `NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  ...` -> `535.104.05`.
pub fn nvidia_driver_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains("Kernel Module"))?;
    let after = line.split("Kernel Module").nth(1)?;
    after
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
}

/// The highest CUDA a Linux driver runs: NVIDIA's table of minimum driver
/// versions per CUDA toolkit (CUDA Toolkit release notes, "CUDA Toolkit
/// and Corresponding Driver Versions", Linux x86_64 column), as data.
pub fn cuda_of_driver(driver: &str) -> Option<String> {
    const TABLE: &[((u32, u32), &str)] = &[
        ((570, 26), "12.8"),
        ((560, 28), "12.6"),
        ((555, 42), "12.5"),
        ((550, 54), "12.4"),
        ((545, 23), "12.3"),
        ((535, 54), "12.2"),
        ((530, 30), "12.1"),
        ((525, 60), "12.0"),
        ((520, 61), "11.8"),
        ((515, 43), "11.7"),
        ((510, 39), "11.6"),
        ((495, 29), "11.5"),
        ((470, 42), "11.4"),
        ((465, 19), "11.3"),
        ((460, 27), "11.2"),
        ((455, 23), "11.1"),
        ((450, 36), "11.0"),
        ((440, 33), "10.2"),
        ((418, 39), "10.1"),
        ((410, 48), "10.0"),
    ];
    let mut parts = driver.split('.').map(|p| p.parse::<u32>().ok());
    let v = (parts.next()??, parts.next().flatten().unwrap_or(0));
    TABLE
        .iter()
        .find(|(min, _)| v >= *min)
        .map(|(_, cuda)| cuda.to_string())
}

/// Compares dotted versions numerically (`12.10` > `12.2`); missing parts are 0.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |s: &str| {
        s.split('.')
            .map(|p| p.trim().parse::<u64>().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    let (mut x, mut y) = (parse(a), parse(b));
    let n = x.len().max(y.len());
    x.resize(n, 0);
    y.resize(n, 0);
    x.cmp(&y)
}

impl NodeCapabilities {
    /// Facts from the given texts (pure): what detection does with the
    /// real files, and what the tests do with fixtures.
    pub fn from_texts(
        node: &str,
        oci_arch: &str,
        cpuinfo: &str,
        gpus: Vec<Gpu>,
    ) -> NodeCapabilities {
        NodeCapabilities {
            node: node.to_string(),
            os: "linux".into(),
            cpu: cpu::detect(oci_arch, cpuinfo),
            gpus,
            overridden: Vec::new(),
        }
    }

    /// Detects this machine's facts (no overrides).
    pub fn detect(node: &str) -> NodeCapabilities {
        let arch = cpu::oci_arch(std::env::consts::ARCH).to_string();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let nvidia = std::fs::read_to_string("/proc/driver/nvidia/version").ok();
        let gpus = gpus_in(Path::new("/sys/bus/pci/devices"), nvidia.as_deref());
        NodeCapabilities::from_texts(node, &arch, &cpuinfo, gpus)
    }

    /// Applies the site's override of this node, if any. Naming a target
    /// sets its vendor, ancestors and (unless `cpu_features` is given) its
    /// archspec features, as if detection had found that CPU.
    pub fn apply(mut self, o: Option<&NodeOverride>) -> Result<NodeCapabilities, String> {
        let Some(o) = o else { return Ok(self) };
        let node = self.node.clone();
        if let Some(arch) = &o.architecture {
            self.cpu.architecture = arch.clone();
            self.overridden.push("architecture".into());
        }
        if let Some(name) = &o.cpu_target {
            let t = cpu::target(name).ok_or_else(|| {
                format!("nodes.{node}.cpu_target: {name:?} is not an archspec target (e.g. x86_64_v3, icelake, zen4, neoverse_v1)")
            })?;
            self.cpu.target = t.name().to_string();
            self.cpu.ancestors = cpu::ancestors(t);
            self.cpu.vendor = t.vendor().to_string();
            self.cpu.features = t.all_features().into_iter().collect();
            self.overridden.push("cpu.target".into());
        }
        if let Some(v) = &o.cpu_vendor {
            self.cpu.vendor = v.clone();
            self.overridden.push("cpu.vendor".into());
        }
        if let Some(f) = &o.cpu_features {
            self.cpu.features = f.iter().cloned().collect::<BTreeSet<_>>();
            self.overridden.push("cpu.features".into());
        }
        if let Some(gpus) = &o.gpus {
            self.gpus = gpus
                .iter()
                .map(|g| Gpu {
                    vendor: g.vendor.clone(),
                    address: String::new(),
                    driver: g.driver.clone(),
                    cuda: g
                        .cuda
                        .clone()
                        .or_else(|| g.driver.as_deref().and_then(cuda_of_driver)),
                })
                .collect();
            self.overridden.push("gpus".into());
        }
        Ok(self)
    }

    /// The highest CUDA version any of the node's GPUs' drivers runs.
    pub fn cuda(&self) -> Option<&str> {
        self.gpus
            .iter()
            .filter_map(|g| g.cuda.as_deref())
            .max_by(|a, b| version_cmp(a, b))
    }

    /// Lines for `shoal doctor` and `shoal select`.
    pub fn render(&self) -> String {
        let c = &self.cpu;
        let level = cpu::level_name(&c.architecture, cpu::node_level(c));
        let mut s = format!(
            "node:       {}\nplatform:   {}/{} (level {level})\ncpu:        {} {} (ancestors: {})\nfeatures:   {} flags\n",
            self.node,
            self.os,
            c.architecture,
            c.vendor,
            c.target,
            if c.ancestors.is_empty() { "none".to_string() } else { c.ancestors.join(", ") },
            c.features.len()
        );
        if self.gpus.is_empty() {
            s.push_str("gpus:       none\n");
        }
        for g in &self.gpus {
            s.push_str(&format!(
                "gpu:        {} {} driver {} cuda {}\n",
                g.vendor,
                if g.address.is_empty() {
                    "(config)"
                } else {
                    &g.address
                },
                g.driver.as_deref().unwrap_or("-"),
                g.cuda.as_deref().unwrap_or("-")
            ));
        }
        if !self.overridden.is_empty() {
            s.push_str(&format!(
                "overridden: {} (site config [nodes.\"{}\"])\n",
                self.overridden.join(", "),
                self.node
            ));
        }
        s
    }
}

/// This node's name: Slurm's (`SLURMD_NODENAME`, which slurmd sets for
/// its steps), else the host name.
pub fn this_node_name() -> String {
    std::env::var("SLURMD_NODENAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".into())
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    boot_id: String,
    version: u32,
    detected: NodeCapabilities,
}

const CACHE_VERSION: u32 = 1;

/// The detected facts of this node (before overrides), from `cache` when
/// it was written since the last boot, else detected and written there
/// (best effort: an unwritable cache only costs a detection).
pub fn detect_cached(node: &str, cache: Option<&Path>) -> NodeCapabilities {
    let boot = boot_id();
    if let Some(path) = cache {
        if let Ok(bytes) = std::fs::read(path) {
            if let Ok(c) = serde_json::from_slice::<CacheFile>(&bytes) {
                if c.boot_id == boot && c.version == CACHE_VERSION && c.detected.node == node {
                    return c.detected;
                }
            }
        }
    }
    let detected = NodeCapabilities::detect(node);
    if let Some(path) = cache {
        let file = CacheFile {
            boot_id: boot,
            version: CACHE_VERSION,
            detected: detected.clone(),
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
            let tmp = dir.join(format!(".{}.new", crate::image::store::unique_name()));
            if std::fs::write(&tmp, serde_json::to_vec_pretty(&file).expect("serializes")).is_ok() {
                let _ = std::fs::set_permissions(
                    &tmp,
                    std::os::unix::fs::PermissionsExt::from_mode(0o644),
                );
                let _ = std::fs::rename(&tmp, path);
            }
            let _ = std::fs::remove_file(&tmp);
        }
    }
    detected
}

/// The facts of node `node` as the site sees them: detected (cached in
/// `cache`), then the config's `[nodes."NODE"]` applied.
pub fn node_capabilities(
    config: &Config,
    node: &str,
    cache: Option<&Path>,
) -> Result<NodeCapabilities, String> {
    detect_cached(node, cache).apply(config.nodes.get(node))
}

/// Reads a capabilities file (`shoal select --node NAME=FILE`, or one a
/// node published): either the JSON of [`NodeCapabilities`] or a cache file.
pub fn read_capabilities(path: &Path) -> Result<NodeCapabilities, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Ok(c) = serde_json::from_slice::<CacheFile>(&bytes) {
        return Ok(c.detected);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a Shoal capabilities file ({e})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpi_sonames_and_versions() {
        assert_eq!(mpi_from_soname("libmpich.so.12.2.0").unwrap().abi, "mpich");
        assert_eq!(
            mpi_from_soname("libmpi.so.40.30.4").unwrap().implementation,
            "openmpi"
        );
        assert!(mpi_from_soname("libmpifort.so.12").is_none());
        assert_eq!(
            mpi_version_in(b"xx\0MPICH Version:\t4.0.2\0", "mpich").as_deref(),
            Some("4.0.2")
        );
        assert_eq!(
            mpi_version_in(b"..Open MPI v4.1.4, package", "openmpi").as_deref(),
            Some("4.1.4")
        );
        assert_eq!(abi_family("Intel-MPI"), Some("mpich"));
        assert_eq!(abi_family("openmpi"), Some("openmpi"));
        assert_eq!(abi_family("lam"), None);
    }

    #[test]
    fn nvidia_driver_and_cuda() {
        let text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\nGCC version: gcc 12";
        assert_eq!(nvidia_driver_version(text).as_deref(), Some("535.104.05"));
        assert_eq!(cuda_of_driver("535.104.05").as_deref(), Some("12.2"));
        assert_eq!(cuda_of_driver("470.57").as_deref(), Some("11.4"));
        assert_eq!(cuda_of_driver("390.1"), None);
        assert_eq!(version_cmp("12.10", "12.2"), std::cmp::Ordering::Greater);
        assert_eq!(version_cmp("12", "12.0"), std::cmp::Ordering::Equal);
    }

    #[test]
    fn pci_gpus() {
        let dir = tempfile::tempdir().unwrap();
        let dev = |name: &str, class: &str, vendor: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("class"), format!("{class}\n")).unwrap();
            std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
        };
        dev("0000:00:02.0", "0x030000", "0x1234"); // QEMU VGA
        dev("0000:3b:00.0", "0x030200", "0x10de"); // NVIDIA compute GPU
        dev("0000:00:1f.0", "0x060100", "0x8086"); // ISA bridge
        dev("0000:c1:00.0", "0x030000", "0x1002"); // AMD
        let text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  x";
        let gpus = gpus_in(dir.path(), Some(text));
        assert_eq!(gpus.len(), 2, "{gpus:?}");
        assert_eq!(gpus[0].vendor, "nvidia");
        assert_eq!(gpus[0].cuda.as_deref(), Some("12.4"));
        assert_eq!(gpus[1].vendor, "amd");
        assert_eq!(gpus[1].driver, None);
    }

    #[test]
    fn overrides_replace_detected_facts() {
        let base = NodeCapabilities::from_texts(
            "n1",
            "amd64",
            super::super::cpu::tests::fixture("icelake"),
            vec![],
        );
        let o = NodeOverride {
            cpu_target: Some("x86_64_v3".into()),
            ..Default::default()
        };
        let n = base.clone().apply(Some(&o)).unwrap();
        assert_eq!(n.cpu.target, "x86_64_v3");
        assert_eq!(n.cpu.vendor, "generic");
        assert!(!n.cpu.features.contains("avx512f"));
        assert_eq!(n.overridden, ["cpu.target"]);
        let o = NodeOverride {
            gpus: Some(vec![crate::config::GpuOverride {
                vendor: "nvidia".into(),
                driver: Some("535.54.03".into()),
                cuda: None,
            }]),
            ..Default::default()
        };
        let n = base.clone().apply(Some(&o)).unwrap();
        assert_eq!(n.cuda(), Some("12.2"));
        let bad = NodeOverride {
            cpu_target: Some("pentium9".into()),
            ..Default::default()
        };
        assert!(base
            .apply(Some(&bad))
            .unwrap_err()
            .contains("nodes.n1.cpu_target"));
    }

    #[test]
    fn cache_is_reused_and_keyed_by_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("caps.json");
        let a = detect_cached("n1", Some(&path));
        assert!(path.exists());
        // A changed file is read back as is (same boot): the cache is used.
        let mut text: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        text["detected"]["cpu"]["target"] = "x86_64".into();
        std::fs::write(&path, text.to_string()).unwrap();
        assert_eq!(detect_cached("n1", Some(&path)).cpu.target, "x86_64");
        // Another node's cache is not this node's.
        assert_eq!(detect_cached("n2", Some(&path)).cpu.target, a.cpu.target);
    }
}
