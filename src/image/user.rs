//! The image's `User`, resolved to ids the way container runtimes do.
//!
//! An image config's `User` is `user[:group]`, each part a name or a number. Names are
//! looked up in the image's own `/etc/passwd` and `/etc/group`, never the host's: the
//! files are opened with `RESOLVE_IN_ROOT` (`openat2`), so a symlink in the image
//! (`/etc -> /host/etc`, `/etc/passwd -> ../../../etc/passwd`) resolves inside the
//! image root as it would in the container. Numbers need neither file.
//!
//! The rules are runc's (libcontainer `GetExecUser`): a numeric user without a group
//! takes the primary group of its passwd entry if there is one, else 0; a group named
//! in the value replaces the primary group; without one, the groups of `/etc/group`
//! that list the user by name are its additional groups.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use super::ImageError;

/// `/etc/passwd` or `/etc/group` larger than this is refused unread.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// The highest id accepted, as runc does (ids are signed in parts of the kernel ABI).
const MAX_ID: u32 = i32::MAX as u32;

/// The ids a container process runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Resolves `spec` (an image's `User`: `name`, `uid`, `name:group`, `uid:gid`, ...)
/// against the image root `rootfs`. Errors name `image` and `spec`.
pub fn resolve_user(image: &str, rootfs: &Path, spec: &str) -> Result<User, ImageError> {
    let fail = |reason: String| ImageError::User {
        image: image.to_owned(),
        user: spec.to_owned(),
        reason,
    };
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_num = numeric(user_part).map_err(&fail)?;
    let group_num = match group_part {
        Some(g) => numeric(g).map_err(&fail)?,
        None => None,
    };

    let passwd = read_in_root(rootfs, "etc/passwd").map_err(|e| fail(e.to_string()))?;
    let entry = passwd.as_deref().and_then(|text| {
        parse_lines(text).find(|f| match user_num {
            Some(uid) => f.get(2).and_then(|u| u.parse::<u32>().ok()) == Some(uid),
            None => f.first() == Some(&user_part),
        })
    });
    let (name, uid, mut gid) = match (&entry, user_num) {
        (Some(f), _) => {
            let uid = f.get(2).and_then(|u| u.parse::<u32>().ok());
            let gid = f.get(3).and_then(|g| g.parse::<u32>().ok());
            match (uid, gid) {
                (Some(uid), Some(gid)) if uid <= MAX_ID && gid <= MAX_ID => {
                    (f.first().map(|s| s.to_string()), uid, gid)
                }
                _ => {
                    return Err(fail(
                        "its /etc/passwd entry in the image has no valid uid and gid".into(),
                    ))
                }
            }
        }
        (None, Some(uid)) => (None, uid, 0),
        (None, None) if user_part.is_empty() => (None, 0, 0),
        (None, None) => {
            return Err(fail(match passwd {
                Some(_) => "no such user in the image's /etc/passwd".into(),
                None => "the image has no /etc/passwd to look the name up in".into(),
            }))
        }
    };

    let mut additional_gids = Vec::new();
    if group_part.is_some() || name.is_some() {
        let groups = read_in_root(rootfs, "etc/group").map_err(|e| fail(e.to_string()))?;
        let text = groups.as_deref().unwrap_or("");
        match (group_part, group_num) {
            (Some(_), Some(g)) => gid = g,
            (Some(g), None) => {
                let found = parse_lines(text)
                    .find(|f| f.first() == Some(&g))
                    .and_then(|f| f.get(2).and_then(|n| n.parse::<u32>().ok()))
                    .filter(|n| *n <= MAX_ID);
                gid = found.ok_or_else(|| {
                    fail(match groups {
                        Some(_) => format!("no group {g:?} in the image's /etc/group"),
                        None => "the image has no /etc/group to look the group up in".into(),
                    })
                })?;
            }
            (None, _) => {
                let name = name.as_deref().unwrap_or("");
                for f in parse_lines(text) {
                    let member = f
                        .get(3)
                        .is_some_and(|m| m.split(',').any(|m| m.trim() == name));
                    let g = f.get(2).and_then(|n| n.parse::<u32>().ok());
                    if let (true, Some(g)) = (member, g) {
                        if g <= MAX_ID && !additional_gids.contains(&g) {
                            additional_gids.push(g);
                        }
                    }
                }
            }
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}

/// `Some(n)` for a number in range, `None` for a name.
fn numeric(s: &str) -> Result<Option<u32>, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match s.parse::<u32>() {
        Ok(n) if n <= MAX_ID => Ok(Some(n)),
        _ => Err(format!("{s} is past the highest id, {MAX_ID}")),
    }
}

/// The `:`-separated fields of each entry, comments and blank lines skipped.
fn parse_lines(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

/// The contents of `path` (relative, `/`-separated) inside `rootfs`, resolved as the
/// container would see it; `None` if it does not exist.
fn read_in_root(rootfs: &Path, path: &str) -> io::Result<Option<String>> {
    let root = rustix::fs::open(
        rootfs,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let fd = match rustix::fs::openat2(
        &root,
        path,
        flags,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        // Kernels before 5.6: walk without following any symlink.
        Err(rustix::io::Errno::NOSYS) => match open_nofollow(&root, path, flags) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e),
        },
        Err(e) => return Err(io::Error::from(e)),
    };
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other(format!(
            "/{path} in the image is not a regular file"
        )));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::other(format!(
            "/{path} in the image is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn open_nofollow(root: &OwnedFd, path: &str, flags: OFlags) -> io::Result<Option<OwnedFd>> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Ok(None);
    };
    let mut dir = rustix::io::fcntl_dupfd_cloexec(root, 0)?;
    for part in dirs {
        dir = match rustix::fs::openat(
            dir.as_fd(),
            OsStr::from_bytes(part.as_bytes()),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
    }
    match rustix::fs::openat(
        dir.as_fd(),
        OsStr::from_bytes(last.as_bytes()),
        flags | OFlags::NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct Root(PathBuf);

    impl Root {
        fn new(tag: &str) -> Root {
            let dir =
                std::env::temp_dir().join(format!("scf-image-user-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("rootfs")).unwrap();
            Root(dir)
        }
        fn rootfs(&self) -> PathBuf {
            self.0.join("rootfs")
        }
        fn with_files(self) -> Root {
            let etc = self.rootfs().join("etc");
            std::fs::create_dir_all(&etc).unwrap();
            std::fs::write(
                etc.join("passwd"),
                "root:x:0:0:root:/root:/bin/sh\n\
                 # a comment\n\
                 app:x:1000:1000::/home/app:/bin/sh\n\
                 web:x:1001:1001::/srv:/bin/false\n",
            )
            .unwrap();
            std::fs::write(
                etc.join("group"),
                "root:x:0:\nwheel:x:10:root,app\napp:x:1000:\nstaff:x:50:app, web\n",
            )
            .unwrap();
            self
        }
        fn resolve(&self, spec: &str) -> Result<User, ImageError> {
            resolve_user("oci:test", &self.rootfs(), spec)
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn user(uid: u32, gid: u32, additional_gids: &[u32]) -> User {
        User {
            uid,
            gid,
            additional_gids: additional_gids.to_vec(),
        }
    }

    #[test]
    fn names_and_numbers_resolve_against_the_image() {
        let r = Root::new("resolve").with_files();
        assert_eq!(r.resolve("app").unwrap(), user(1000, 1000, &[10, 50]));
        assert_eq!(r.resolve("1000").unwrap(), user(1000, 1000, &[10, 50]));
        assert_eq!(r.resolve("web").unwrap(), user(1001, 1001, &[50]));
        assert_eq!(r.resolve("0").unwrap(), user(0, 0, &[10]));
        // An explicit group replaces the primary group and adds none.
        assert_eq!(r.resolve("app:staff").unwrap(), user(1000, 50, &[]));
        assert_eq!(r.resolve("app:7").unwrap(), user(1000, 7, &[]));
        assert_eq!(r.resolve("1000:wheel").unwrap(), user(1000, 10, &[]));
        // A uid without an entry: group 0.
        assert_eq!(r.resolve("4242").unwrap(), user(4242, 0, &[]));
        assert_eq!(r.resolve("4242:4243").unwrap(), user(4242, 4243, &[]));
    }

    #[test]
    fn numbers_need_no_files() {
        let r = Root::new("numeric");
        assert_eq!(r.resolve("1000").unwrap(), user(1000, 0, &[]));
        assert_eq!(r.resolve("1000:1000").unwrap(), user(1000, 1000, &[]));
        assert_eq!(r.resolve("0").unwrap(), user(0, 0, &[]));
    }

    #[test]
    fn errors_name_the_image_and_the_user() {
        let r = Root::new("errors").with_files();
        for (spec, expect) in [
            ("nobody", "no such user"),
            ("app:nogroup", "no group \"nogroup\""),
            ("99999999999", "highest id"),
            ("1:99999999999", "highest id"),
        ] {
            let err = r.resolve(spec).unwrap_err().to_string();
            assert!(err.contains("oci:test"), "{err}");
            assert!(err.contains(&format!("{spec:?}")), "{err}");
            assert!(err.contains(expect), "{spec}: {err}");
        }
        let bare = Root::new("errors-bare");
        let err = bare.resolve("app").unwrap_err().to_string();
        assert!(err.contains("no /etc/passwd"), "{err}");
        let err = bare.resolve("1:staff").unwrap_err().to_string();
        assert!(err.contains("no /etc/group"), "{err}");
    }

    #[test]
    fn symlinks_resolve_inside_the_image_root() {
        let r = Root::new("symlinks");
        // Files outside the root that a symlink tries to reach.
        let outside = r.0.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("passwd"), "evil:x:7:7::/:/bin/sh\n").unwrap();
        std::fs::write(outside.join("group"), "evil:x:7:evil\n").unwrap();
        let etc = r.rootfs().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        // An absolute symlink and a `..` one, both meant for the outside file.
        std::os::unix::fs::symlink(outside.join("passwd"), etc.join("passwd")).unwrap();
        std::os::unix::fs::symlink("../../outside/group", etc.join("group")).unwrap();
        let err = r.resolve("evil").unwrap_err().to_string();
        assert!(err.contains("no /etc/passwd"), "{err}");
        assert!(r.resolve("1:evil").is_err());
        // A symlinked /etc is resolved in the root too.
        std::fs::remove_dir_all(&etc).unwrap();
        std::os::unix::fs::symlink(&outside, &etc).unwrap();
        assert!(r.resolve("evil").is_err());
        // A symlink that stays inside the image is followed, as in the container.
        std::fs::remove_file(&etc).unwrap();
        std::fs::create_dir_all(r.rootfs().join("real-etc")).unwrap();
        std::fs::write(
            r.rootfs().join("real-etc/passwd"),
            "app:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/real-etc", &etc).unwrap();
        assert_eq!(r.resolve("app").unwrap(), user(1000, 1000, &[]));
    }

    #[test]
    fn a_passwd_that_is_not_a_file_is_refused() {
        let r = Root::new("notfile");
        std::fs::create_dir_all(r.rootfs().join("etc/passwd")).unwrap();
        let err = r.resolve("app").unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
