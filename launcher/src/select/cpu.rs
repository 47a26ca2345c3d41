//! A CPU as an archspec target, from the text of `/proc/cpuinfo`.
//!
//! The target names, their vendors, features, ancestors and feature aliases
//! are archspec's `microarchitectures.json`, as shipped inside the `archspec`
//! crate (prefix.dev's Rust port, kept in step with the archspec project's
//! JSON; pure data plus a small graph API). The crate's own detector only
//! reads *this* machine's `/proc/cpuinfo` and is private, and it ignores the
//! JSON's `feature_aliases` (so it never finds `sse3`, which Linux lists as
//! `pni`/`ssse3`): detection from any cpuinfo text is therefore ours, below,
//! following archspec's published rules (compatible targets of the family
//! whose vendor is the CPU's or generic and whose features are all present;
//! the best generic one; the deepest descendant of it, narrowed by `CPU part`
//! on Arm; ties broken by name so the answer never depends on hash order).
//!
//! Pure logic: text in, values out.

use std::collections::BTreeSet;
use std::sync::Arc;

use archspec::cpu::Microarchitecture;
use archspec::schema::MicroarchitecturesSchema;
use serde::{Deserialize, Serialize};

/// What Shoal knows about a node's CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    /// OCI architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// `GenuineIntel`, `AuthenticAMD`, `ARM`, `Fujitsu`, ... or `generic`.
    pub vendor: String,
    /// The archspec target (`icelake`, `zen4`, `neoverse_v1`, `x86_64_v3`).
    pub target: String,
    /// Its archspec ancestors, nearest first (`x86_64_v4`, ..., `x86_64`).
    pub ancestors: Vec<String>,
    /// The flags the kernel lists (`flags` on x86, `Features` on Arm).
    pub features: BTreeSet<String>,
}

/// The archspec family root of an OCI architecture.
pub fn family_of(oci_arch: &str) -> Option<&'static str> {
    match oci_arch {
        "amd64" => Some("x86_64"),
        "arm64" => Some("aarch64"),
        "ppc64le" => Some("ppc64le"),
        "riscv64" => Some("riscv64"),
        _ => None,
    }
}

/// The OCI architecture of a kernel machine name (`uname -m`).
pub fn oci_arch(machine: &str) -> &str {
    match machine {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A known archspec target by name.
pub fn target(name: &str) -> Option<&'static Arc<Microarchitecture>> {
    Microarchitecture::known_targets().get(name)
}

/// Names of `t`'s ancestors, nearest first, each once.
pub fn ancestors(t: &Microarchitecture) -> Vec<String> {
    t.ancestors().iter().map(|a| a.name().to_string()).collect()
}

/// Whether the node's flags provide `feature`, as archspec reads it: the
/// flag itself, or one of its `feature_aliases` (`sse3` is there when
/// `ssse3` is; `neon` on every aarch64).
pub fn has_feature(flags: &BTreeSet<String>, family: &str, feature: &str) -> bool {
    if flags.contains(feature) {
        return true;
    }
    let Some(alias) = MicroarchitecturesSchema::schema()
        .feature_aliases
        .get(feature)
    else {
        return false;
    };
    alias
        .any_of
        .as_ref()
        .is_some_and(|any| any.iter().any(|f| flags.contains(f)))
        || alias
            .families
            .as_ref()
            .is_some_and(|fams| fams.iter().any(|f| f == family))
}

/// The first processor's `key: value` lines of a cpuinfo text.
fn fields(cpuinfo: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    for line in cpuinfo.lines() {
        if line.trim().is_empty() && !out.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim(), v.trim()));
        }
    }
    out
}

/// Reads a cpuinfo text of an `oci_arch` machine (`amd64`, `arm64`) and
/// finds its archspec target. Other architectures get their generic
/// family target.
pub fn detect(oci_arch: &str, cpuinfo: &str) -> Cpu {
    let f = fields(cpuinfo);
    let get = |k: &str| f.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let schema = MicroarchitecturesSchema::schema();
    let (vendor, flags, part) = match oci_arch {
        "amd64" => (
            get("vendor_id").unwrap_or("generic").to_string(),
            get("flags"),
            None,
        ),
        "arm64" => {
            let vendor = get("CPU implementer")
                .and_then(|i| schema.conversions.arm_vendors.get(i).cloned())
                .unwrap_or_else(|| "generic".to_string());
            (vendor, get("Features"), get("CPU part"))
        }
        _ => ("generic".to_string(), None, None),
    };
    let features: BTreeSet<String> = flags
        .unwrap_or("")
        .split_ascii_whitespace()
        .map(str::to_string)
        .collect();
    let family = family_of(oci_arch);
    let best = family.and_then(|fam| best_target(fam, &vendor, &features, part));
    let best = best.or_else(|| family.and_then(target));
    Cpu {
        architecture: oci_arch.to_string(),
        vendor,
        target: best.map_or_else(|| oci_arch.to_string(), |t| t.name().to_string()),
        ancestors: best.map(|t| ancestors(t)).unwrap_or_default(),
        features,
    }
}

/// Depth first, then the number of features; the name breaks ties so the
/// order never depends on the hash map's.
fn rank(t: &Microarchitecture) -> (usize, usize, std::cmp::Reverse<String>) {
    (
        t.ancestors().len(),
        t.all_features().len(),
        std::cmp::Reverse(t.name().to_string()),
    )
}

fn best_target(
    family: &str,
    vendor: &str,
    flags: &BTreeSet<String>,
    part: Option<&str>,
) -> Option<&'static Arc<Microarchitecture>> {
    let schema = MicroarchitecturesSchema::schema();
    let root = target(family)?;
    let compatible: Vec<&'static Arc<Microarchitecture>> = Microarchitecture::known_targets()
        .values()
        .filter(|t| t.name() == family || t.decendent_of(root))
        // archspec cannot tell which armv8.x a CPU implements from its
        // flags: on aarch64 only vendor targets (and the root) compete, and
        // the generic levels come as their ancestors.
        .filter(|t| family != "aarch64" || t.vendor() != "generic" || t.name() == family)
        .filter(|t| t.vendor() == "generic" || t.vendor() == vendor)
        .filter(|t| {
            t.all_features()
                .iter()
                .all(|feat| has_feature(flags, family, feat))
        })
        .collect();
    let best_generic = compatible
        .iter()
        .filter(|t| t.vendor() == "generic")
        .max_by_key(|t| rank(t))?;
    let mut candidates: Vec<_> = compatible
        .iter()
        .filter(|t| t.name() != best_generic.name() && t.decendent_of(best_generic))
        .collect();
    let part_matches = |t: &&&Arc<Microarchitecture>| {
        part.is_some()
            && schema
                .microarchitectures
                .get(t.name())
                .and_then(|m| m.cpupart.as_deref())
                == part
    };
    if candidates.iter().any(part_matches) {
        candidates.retain(part_matches);
    }
    Some(
        candidates
            .into_iter()
            .max_by_key(|t| rank(t))
            .copied()
            .unwrap_or(best_generic),
    )
}

/// A `platform.variant` as an ordered level: amd64 `v1`..`v4`, arm64
/// `v8`, `v8.1`..`v8.9`, `v9`, `v9.N`. `None` for anything else.
pub fn variant_level(oci_arch: &str, variant: &str) -> Option<(u32, u32)> {
    let v = variant.strip_prefix('v')?;
    let (major, minor) = match v.split_once('.') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => (v.parse().ok()?, 0),
    };
    let ok = match oci_arch {
        "amd64" => (1..=4).contains(&major) && minor == 0,
        "arm64" => (major == 8 || major == 9) && minor <= 9,
        _ => false,
    };
    ok.then_some((major, minor))
}

/// The generic archspec target a `platform.variant` stands for
/// (`amd64` `v3` -> `x86_64_v3`, `arm64` `v8.2` -> `armv8.2a`).
pub fn variant_target(oci_arch: &str, level: (u32, u32)) -> Option<String> {
    match (oci_arch, level) {
        ("amd64", (1, 0)) => Some("x86_64".into()),
        ("amd64", (n, 0)) => Some(format!("x86_64_v{n}")),
        ("arm64", (8, 0)) => Some("aarch64".into()),
        ("arm64", (a, b)) => Some(format!("armv{a}.{b}a")),
        _ => None,
    }
    .filter(|t| target(t).is_some())
}

/// The node's level: the highest generic target among its target and
/// ancestors, as a variant level (`x86_64_v4` -> (4, 0), `armv8.2a` ->
/// (8, 2)). A CPU with no generic level above the base has the base.
pub fn node_level(cpu: &Cpu) -> (u32, u32) {
    let names = std::iter::once(&cpu.target).chain(cpu.ancestors.iter());
    let mut best = match cpu.architecture.as_str() {
        "arm64" => (8, 0),
        _ => (1, 0),
    };
    for n in names {
        let level = if let Some(v) = n.strip_prefix("x86_64_v") {
            v.parse().ok().map(|v| (v, 0))
        } else if let Some(v) = n.strip_prefix("armv").and_then(|v| v.strip_suffix('a')) {
            v.split_once('.')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        } else {
            None
        };
        if let Some(l) = level {
            best = best.max(l);
        }
    }
    best
}

/// `(4, 0)` -> `v4`, `(8, 2)` -> `v8.2`.
pub fn level_name(oci_arch: &str, level: (u32, u32)) -> String {
    match (oci_arch, level) {
        ("arm64", (a, 0)) => format!("v{a}"),
        ("arm64", (a, b)) => format!("v{a}.{b}"),
        (_, (a, _)) => format!("v{a}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// cpuinfo fixtures of real CPUs, written from public facts (vendor
    /// documentation of each generation's instruction sets and the flag
    /// names Linux prints for them); see `fixtures/README`.
    pub fn fixture(name: &str) -> &'static str {
        match name {
            "skylake_avx512" => include_str!("fixtures/skylake_avx512.cpuinfo"),
            "icelake" => include_str!("fixtures/icelake.cpuinfo"),
            "sapphirerapids" => include_str!("fixtures/sapphirerapids.cpuinfo"),
            "zen2" => include_str!("fixtures/zen2.cpuinfo"),
            "zen3" => include_str!("fixtures/zen3.cpuinfo"),
            "zen4" => include_str!("fixtures/zen4.cpuinfo"),
            "neoverse_n1" => include_str!("fixtures/neoverse_n1.cpuinfo"),
            "neoverse_v1" => include_str!("fixtures/neoverse_v1.cpuinfo"),
            "a64fx" => include_str!("fixtures/a64fx.cpuinfo"),
            "haswell" => include_str!("fixtures/haswell.cpuinfo"),
            other => panic!("no fixture {other}"),
        }
    }

    pub fn arch_of(name: &str) -> &'static str {
        if ["neoverse_n1", "neoverse_v1", "a64fx"].contains(&name) {
            "arm64"
        } else {
            "amd64"
        }
    }

    #[test]
    fn real_cpus_are_their_archspec_targets() {
        for (name, level, vendor) in [
            ("skylake_avx512", "v4", "GenuineIntel"),
            ("icelake", "v4", "GenuineIntel"),
            ("sapphirerapids", "v4", "GenuineIntel"),
            ("haswell", "v3", "GenuineIntel"),
            ("zen2", "v3", "AuthenticAMD"),
            ("zen3", "v3", "AuthenticAMD"),
            ("zen4", "v4", "AuthenticAMD"),
            ("neoverse_n1", "v8.2", "ARM"),
            ("neoverse_v1", "v8.4", "ARM"),
            ("a64fx", "v8.2", "Fujitsu"),
        ] {
            let arch = arch_of(name);
            let cpu = detect(arch, fixture(name));
            assert_eq!(cpu.target, name, "{name}: {cpu:?}");
            assert_eq!(cpu.vendor, vendor, "{name}");
            assert_eq!(
                level_name(arch, node_level(&cpu)),
                level,
                "{name}: {:?}",
                cpu.ancestors
            );
        }
    }

    #[test]
    fn ancestors_hold_the_generic_levels() {
        let zen4 = detect("amd64", fixture("zen4"));
        for a in [
            "zen3",
            "zen2",
            "zen",
            "x86_64_v4",
            "x86_64_v3",
            "x86_64_v2",
            "x86_64",
        ] {
            assert!(
                zen4.ancestors.iter().any(|x| x == a),
                "{a} in {:?}",
                zen4.ancestors
            );
        }
        let v1 = detect("arm64", fixture("neoverse_v1"));
        for a in [
            "neoverse_n1",
            "armv8.4a",
            "armv8.2a",
            "cortex_a72",
            "aarch64",
        ] {
            assert!(
                v1.ancestors.iter().any(|x| x == a),
                "{a} in {:?}",
                v1.ancestors
            );
        }
        assert!(!detect("amd64", fixture("zen2"))
            .ancestors
            .contains(&"x86_64_v4".to_string()));
    }

    #[test]
    fn a_hidden_flag_drops_to_the_generic_level() {
        // A VM that hides AVX-512 from a Sapphire Rapids host.
        let text = fixture("sapphirerapids").replace(" avx512f", "");
        let cpu = detect("amd64", &text);
        assert_eq!(
            level_name("amd64", node_level(&cpu)),
            "v3",
            "{}",
            cpu.target
        );
        // Nothing at all: the family's base.
        let bare = detect("amd64", "vendor_id : GenuineIntel\nflags : fpu\n");
        assert_eq!(
            (bare.target.as_str(), node_level(&bare)),
            ("x86_64", (1, 0))
        );
        let arm = detect("arm64", "CPU implementer : 0x99\nFeatures : fp\n");
        assert_eq!(
            (arm.target.as_str(), arm.vendor.as_str()),
            ("aarch64", "generic")
        );
    }

    #[test]
    fn variants() {
        assert_eq!(variant_level("amd64", "v3"), Some((3, 0)));
        assert_eq!(variant_level("amd64", "v5"), None);
        assert_eq!(variant_level("arm64", "v8.2"), Some((8, 2)));
        assert_eq!(variant_level("arm64", "v9"), Some((9, 0)));
        assert_eq!(variant_level("arm64", "8"), None);
        assert_eq!(
            variant_target("amd64", (3, 0)).as_deref(),
            Some("x86_64_v3")
        );
        assert_eq!(variant_target("amd64", (1, 0)).as_deref(), Some("x86_64"));
        assert_eq!(variant_target("arm64", (8, 4)).as_deref(), Some("armv8.4a"));
        assert_eq!(variant_target("arm64", (8, 0)).as_deref(), Some("aarch64"));
    }
}
