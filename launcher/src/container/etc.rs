//! /etc/passwd and /etc/group inside: the image's entries with the user's
//! merged in, so `id`, `ls -l` and `getpwuid` see the same user as outside.
//!
//! Pure text transformations; reading and writing the files is `rootfs.rs`.

/// The user's entries to merge in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    /// (name, gid) of the primary and supplementary groups.
    pub groups: Vec<(String, u32)>,
}

impl Identity {
    pub fn passwd_line(&self) -> String {
        format!("{}:x:{}:{}::{}:{}", self.name, self.uid, self.gid, self.home, self.shell)
    }
}

/// The image's passwd with any entry of the same name or uid replaced by
/// the user's.
pub fn merge_passwd(image: &str, who: &Identity) -> String {
    let mut out = String::new();
    for line in image.lines() {
        let mut f = line.split(':');
        let name = f.next().unwrap_or("");
        let uid = f.nth(1).and_then(|u| u.parse::<u32>().ok());
        if name == who.name || uid == Some(who.uid) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&who.passwd_line());
    out.push('\n');
    out
}

/// The image's group file with the user's groups merged in: a group of the
/// same gid keeps its image name and gains the user as a member; a missing
/// one is added under the host's name.
pub fn merge_group(image: &str, who: &Identity) -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for line in image.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let gid = fields.get(2).and_then(|g| g.parse::<u32>().ok());
        match gid {
            Some(g) if fields.len() == 4 && who.groups.iter().any(|(_, id)| *id == g) => {
                seen.push(g);
                let mut members: Vec<&str> =
                    fields[3].split(',').filter(|m| !m.is_empty()).collect();
                if !members.contains(&who.name.as_str()) {
                    members.push(&who.name);
                }
                out.push_str(&format!("{}:{}:{}:{}\n", fields[0], fields[1], g, members.join(",")));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (name, gid) in &who.groups {
        if !seen.contains(gid) {
            seen.push(*gid);
            out.push_str(&format!("{name}:x:{gid}:{}\n", who.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            name: "alice".into(),
            uid: 1001,
            gid: 1001,
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
            groups: vec![("alice".into(), 1001), ("hpc".into(), 50)],
        }
    }

    #[test]
    fn passwd_keeps_image_entries_and_replaces_clashes() {
        let img = "root:x:0:0:root:/root:/bin/sh\nold:x:1001:1:x:/x:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n";
        let out = merge_passwd(img, &alice());
        assert!(out.starts_with("root:x:0:0:"));
        assert!(!out.contains("old:"));
        assert!(out.contains("nobody:x:65534"));
        assert!(out.ends_with("alice:x:1001:1001::/home/alice:/bin/bash\n"));
    }

    #[test]
    fn group_adds_missing_and_joins_existing() {
        let img = "root:x:0:\nstaff:x:50:bob\n";
        let out = merge_group(img, &alice());
        assert!(out.contains("staff:x:50:bob,alice\n"), "{out}");
        assert!(out.contains("alice:x:1001:alice\n"), "{out}");
        assert!(!out.contains("hpc:"), "{out}");
    }

    #[test]
    fn empty_image_files_get_the_user() {
        assert_eq!(merge_passwd("", &alice()), "alice:x:1001:1001::/home/alice:/bin/bash\n");
        assert_eq!(merge_group("", &alice()).lines().count(), 2);
    }
}
