//! Local accounts for the access settings: user and group names resolved to ids at start-up from
//! `/etc/passwd` and `/etc/group` (where systemd-sysusers and useradd put the accounts outsock's
//! deploy files create), and a group's members. Names are resolved once: an account added later
//! counts after a restart. Accounts known only to other NSS sources (LDAP, …) are given by number.

use serde::Deserialize;

/// A user or group as a setting names it: a number, or a name resolved at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Account {
    Id(u32),
    Name(String),
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "{id}"),
            Self::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// A name made of digits is a number (environment lists arrive as strings).
fn numeric(name: &str) -> Option<u32> {
    name.parse().ok()
}

/// The account databases as text (read from /etc, or given by tests).
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    passwd: String,
    group: String,
}

impl Accounts {
    /// Reads `/etc/passwd` and `/etc/group` (a missing file reads as empty).
    #[must_use]
    pub fn system() -> Self {
        Self {
            passwd: std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
            group: std::fs::read_to_string("/etc/group").unwrap_or_default(),
        }
    }

    /// Databases given as text (tests).
    #[must_use]
    pub fn from_text(passwd: &str, group: &str) -> Self {
        Self {
            passwd: passwd.to_owned(),
            group: group.to_owned(),
        }
    }

    /// The uid of user `a`.
    #[must_use]
    pub fn uid(&self, a: &Account) -> Option<u32> {
        match a {
            Account::Id(id) => Some(*id),
            Account::Name(n) => {
                numeric(n).or_else(|| field_of(&self.passwd, n, 2).and_then(|s| s.parse().ok()))
            }
        }
    }

    /// The gid of group `a`.
    #[must_use]
    pub fn gid(&self, a: &Account) -> Option<u32> {
        match a {
            Account::Id(id) => Some(*id),
            Account::Name(n) => {
                numeric(n).or_else(|| field_of(&self.group, n, 2).and_then(|s| s.parse().ok()))
            }
        }
    }

    /// The uids of the members of group `gid`: users whose primary group it is, and the users
    /// its /etc/group line lists.
    #[must_use]
    pub fn members(&self, gid: u32) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 3 && f[3].parse() == Ok(gid))
                    .then(|| f[2].parse().ok())
                    .flatten()
            })
            .collect();
        for line in self.group.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3 && f[2].parse() == Ok(gid) {
                for name in f[3].split(',').filter(|n| !n.is_empty()) {
                    if let Some(uid) = self.uid(&Account::Name(name.to_owned())) {
                        out.push(uid);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Field `index` of the line of `db` whose first field is `name`.
fn field_of<'a>(db: &'a str, name: &str, index: usize) -> Option<&'a str> {
    db.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.get(index).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_members() {
        let a = Accounts::from_text(
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/a:/bin/sh\n\
             bob:x:1001:1001::/home/b:/bin/sh\nvmm:x:990:990::/:/sbin/nologin\n",
            "root:x:0:\nalice:x:1000:\nbob:x:1001:\nusers:x:100:alice,ghost\nbobs:x:1001:\n",
        );
        assert_eq!(a.uid(&Account::Name("vmm".into())), Some(990));
        assert_eq!(a.uid(&Account::Id(5)), Some(5));
        assert_eq!(a.uid(&Account::Name("77".into())), Some(77));
        assert_eq!(a.uid(&Account::Name("nobody-here".into())), None);
        assert_eq!(a.gid(&Account::Name("users".into())), Some(100));
        assert_eq!(a.members(100), [1000]);
        assert_eq!(a.members(1001), [1001]);
        assert!(a.members(4242).is_empty());
    }
}
