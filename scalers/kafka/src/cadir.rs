//! The merged anchors as an OpenSSL hashed directory, for librdkafka's `ssl.ca.location`.
//!
//! Given the anchors as `ssl.ca.pem`, every librdkafka client parses the whole bundle
//! (about 150 system roots plus the custom CAs) into a trust store of its own: about
//! 1 MiB per client. Given a directory laid out as OpenSSL's `c_rehash` does
//! (`<subject-hash>.<n>` files), OpenSSL looks an issuer up by its name hash when a
//! chain needs it and loads only that certificate. The trust is the same; the memory
//! is not.
//!
//! OpenSSL looks a name up in the directory each time a chain needs an issuer whose name
//! its store holds no certificate of, so a certificate of a new name added to the
//! directory reaches a running client at its next handshake. What it already loaded
//! stays in its store, and a name it loaded is not looked up again: a client whose
//! chains used a removed certificate, or one whose name got another certificate, must be
//! rebuilt (the scaler's follower asks the context which were used, and
//! [`CaDir::update`] refuses the second).
//!
//! The directories live in one private folder (mode 0700, random name), one subfolder per
//! cluster, written completely before they are used, updated in place (each file replaced
//! by a rename) and removed when the last client that reads one is gone.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The private folder the directories live in; removed when the last directory goes.
struct Root(PathBuf);

impl Drop for Root {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One hashed CA directory; removed when the last client using it is gone.
pub struct CaDir {
    path: PathBuf,
    /// Updates one at a time.
    updating: Mutex<()>,
    _root: Arc<Root>,
}

impl CaDir {
    /// Where it is.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the directory hold every certificate of `pem` and no other, in place, when
    /// that is safe for a client reading it: every subject hash either keeps exactly the
    /// files it had, is new, or is gone. New files are written first (all aside, then each
    /// renamed to its name, a name's `.0` last), then the files of the hashes that went
    /// are removed (`.0` first).
    ///
    /// `Ok(false)`, with nothing changed, when a hash that stays changes its files (a CA
    /// re-keyed under the same name, or one of two CAs of one name removed): OpenSSL
    /// looks a name up in the directory only while its store holds no certificate of that
    /// name, so a client that already loaded one would never see the other. Such a
    /// client must be rebuilt.
    pub fn update(&self, pem: &str) -> io::Result<bool> {
        let _one = self
            .updating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let wanted = hashed(pem)?;
        let mut held: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !name.starts_with('.') {
                held.insert(name, fs::read(entry.path())?);
            }
        }
        let (held, wanted) = (buckets(&held), buckets(&wanted));
        if held
            .iter()
            .any(|(hash, now)| wanted.get(hash).is_some_and(|then| then != now))
        {
            return Ok(false);
        }
        // So every file that is new belongs to a new name. They are all written aside first
        // (OpenSSL reads only `<hash>.<n>`: a dot-file is never looked at), then renamed to
        // their names, a name's `.0` last: OpenSSL reads a name's files from `.0` up,
        // stops at the first missing one, and does not look a name up again once its store
        // holds it, so a lookup between two renames must find none of a name's files
        // rather than some of them.
        let new: Vec<(&str, &[u8])> = wanted
            .iter()
            .filter(|(hash, _)| !held.contains_key(*hash))
            .flat_map(|(_, files)| files.values().rev().copied())
            .collect();
        let aside = |name: &str| self.path.join(format!(".{name}.new"));
        for (name, bytes) in &new {
            fs::File::create(aside(name))?.write_all(bytes)?;
        }
        for (name, _) in &new {
            fs::rename(aside(name), self.path.join(name))?;
        }
        // A name that went is removed from `.0` up, so a lookup meanwhile finds none.
        for (_, files) in held.iter().filter(|(hash, _)| !wanted.contains_key(*hash)) {
            for (name, _) in files.values() {
                fs::remove_file(self.path.join(name))?;
            }
        }
        Ok(true)
    }
}

impl Drop for CaDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A name's files by suffix: (file name, contents). `None`: a file of another form.
type Bucket<'a> = BTreeMap<Option<u32>, (&'a str, &'a [u8])>;

/// The files of a hashed directory by subject hash, then by suffix (`<hash>.<n>`, `n` in
/// its canonical form). A name of another form is a bucket of its own (so that it is
/// removed), or, when it equals a hash, an extra file of that hash's bucket (so that the
/// bucket differs from any wanted one): never in the place of another file.
fn buckets(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<&str, Bucket<'_>> {
    let mut buckets: BTreeMap<&str, Bucket<'_>> = BTreeMap::new();
    for (name, bytes) in files {
        let suffix = |n: &str| n.parse::<u32>().ok().filter(|v| v.to_string() == n);
        let (hash, n) = match name.split_once('.') {
            Some((hash, n)) => match suffix(n) {
                Some(n) => (hash, Some(n)),
                None => (name.as_str(), None),
            },
            None => (name.as_str(), None),
        };
        buckets
            .entry(hash)
            .or_default()
            .insert(n, (name.as_str(), bytes.as_slice()));
    }
    buckets
}

/// Hashed CA directories under one private folder.
#[derive(Default)]
pub struct CaDirs {
    root: Mutex<Weak<Root>>,
    written: AtomicU64,
}

impl CaDirs {
    /// A new hashed directory holding every certificate of `pem`, for one cluster's
    /// clients. Keep the handle as long as a client reads from the directory.
    pub fn dir_for(&self, pem: &str) -> io::Result<Arc<CaDir>> {
        let root = {
            let mut root = self
                .root
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match root.upgrade() {
                Some(r) => r,
                None => {
                    let r = Arc::new(Root(private_dir(&std::env::temp_dir())?));
                    *root = Arc::downgrade(&r);
                    r
                }
            }
        };
        // A new name every time: a directory being removed is never reused.
        let n = self.written.fetch_add(1, Ordering::Relaxed) + 1;
        let path = root.0.join(format!("cluster-{n}"));
        write_hashed(&path, pem)?;
        Ok(Arc::new(CaDir {
            path,
            updating: Mutex::new(()),
            _root: root,
        }))
    }
}

/// A new directory only this user can enter, with a random name under `parent`.
fn private_dir(parent: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    for _ in 0..16 {
        let dir = parent.join(format!("trustscale-kafka-ca-{:016x}", fastrand::u64(..)));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("could not create a private directory"))
}

/// Every certificate of `pem` as the file it is in a hashed directory:
/// `<subject-hash>.<n>` and its PEM.
fn hashed(pem: &str) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let certs = openssl::x509::X509::stack_from_pem(pem.as_bytes())
        .map_err(|e| io::Error::other(format!("parsing the CA bundle: {e}")))?;
    if certs.is_empty() {
        return Err(io::Error::other("the CA bundle holds no certificate"));
    }
    let mut used: HashMap<u32, u32> = HashMap::new();
    let mut files = BTreeMap::new();
    for cert in &certs {
        let hash = cert.subject_name_hash();
        let n = used.entry(hash).or_insert(0);
        let pem = cert
            .to_pem()
            .map_err(|e| io::Error::other(format!("encoding a CA certificate: {e}")))?;
        files.insert(format!("{hash:08x}.{n}"), pem);
        *n += 1;
    }
    Ok(files)
}

/// Writes every certificate of `pem` into `dir` as `<subject-hash>.<n>`: first into a
/// sibling folder, renamed into place once complete.
fn write_hashed(dir: &Path, pem: &str) -> io::Result<()> {
    let files = hashed(pem)?;
    let staging = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir(&staging)?;
    for (name, bytes) in &files {
        fs::File::create(staging.join(name))?.write_all(bytes)?;
    }
    fs::rename(&staging, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn one_file_per_certificate_named_by_subject_hash() {
        let dirs = CaDirs::default();
        // Two CAs with the same subject (a rotation) share a hash: .0 and .1.
        let bundle = format!("{}{}{}", ca("one"), ca("two"), ca("two"));
        let dir = dirs.dir_for(&bundle).unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names.iter().filter(|n| n.ends_with(".1")).count(), 1);
        let two = openssl::x509::X509::from_pem(ca("two").as_bytes()).unwrap();
        assert!(names.contains(&format!("{:08x}.0", two.subject_name_hash())));
        let again = dirs.dir_for(&bundle).unwrap();
        assert_ne!(
            again.path(),
            dir.path(),
            "one per cluster: updated in place"
        );
        let root = dir.path().parent().unwrap().to_path_buf();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            0o700
        );
        drop(dirs);
        assert!(dir.path().exists(), "kept while a client holds it");
        drop((dir, again));
        assert!(!root.exists(), "removed with the last user");
    }

    /// A file that is not `<hash>.<n>` in canonical form never takes the place of one
    /// that is: `<hash>.00` and a bare `<hash>` beside `<hash>.0` are neither compared as
    /// `.0` nor left behind.
    #[test]
    fn stray_names_beside_a_hashs_files_are_not_taken_for_them() {
        let dirs = CaDirs::default();
        let one = ca("one");
        let dir = dirs.dir_for(&one).unwrap();
        let hash = format!(
            "{:08x}",
            openssl::x509::X509::from_pem(one.as_bytes())
                .unwrap()
                .subject_name_hash()
        );
        let names = || {
            let mut n: Vec<String> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            n.sort();
            n
        };
        // A stray of another name form: its own bucket, removed; `.0` kept in place.
        fs::write(dir.path().join(format!("{hash}.00")), b"stray").unwrap();
        assert!(dir.update(&one).unwrap());
        assert_eq!(names(), vec![format!("{hash}.0")]);
        // A stray named as the hash itself: the name's files differ from those wanted,
        // so the update refuses (the client is rebuilt) rather than keep it.
        fs::write(dir.path().join(&hash), b"stray").unwrap();
        assert!(!dir.update(&one).unwrap());
        assert_eq!(
            names(),
            vec![hash.clone(), format!("{hash}.0")],
            "nothing changed"
        );
    }

    /// A CA key and certificate, and a leaf for `localhost` it signed.
    fn ca_and_leaf(name: &str) -> (String, openssl::x509::X509) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let issuer = rcgen::Issuer::new(params, key);
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        (
            ca.pem(),
            openssl::x509::X509::from_pem(leaf.pem().as_bytes()).unwrap(),
        )
    }

    /// Verifies `leaf` with `store` as OpenSSL does for a TLS client (no intermediates).
    fn verifies(store: &openssl::x509::store::X509Store, leaf: &openssl::x509::X509) -> bool {
        let chain = openssl::stack::Stack::new().unwrap();
        let mut ctx = openssl::x509::X509StoreContext::new().unwrap();
        ctx.init(store, leaf, &chain, |c| c.verify_cert()).unwrap()
    }

    /// What the follower counts on: OpenSSL reading the directory as librdkafka makes it
    /// read it (`ssl.ca.location`, a hash-directory lookup in one long-lived store).
    #[test]
    fn an_update_reaches_a_running_store_and_a_used_certificate_stays_in_it() {
        use openssl::x509::store::{X509Lookup, X509StoreBuilder};
        let dirs = CaDirs::default();
        let (one, one_leaf) = ca_and_leaf("one");
        let (two, two_leaf) = ca_and_leaf("two");
        let (three, three_leaf) = ca_and_leaf("three");
        let dir = dirs.dir_for(&one).unwrap();
        let mut builder = X509StoreBuilder::new().unwrap();
        builder
            .add_lookup(X509Lookup::hash_dir())
            .unwrap()
            .add_dir(dir.path().to_str().unwrap(), openssl::ssl::SslFiletype::PEM)
            .unwrap();
        let store = builder.build();
        assert!(verifies(&store, &one_leaf));
        assert!(
            !verifies(&store, &two_leaf),
            "not trusted before the update"
        );

        // Added: the running store finds it at its next verification.
        assert!(dir.update(&format!("{one}{two}")).unwrap());
        assert!(verifies(&store, &two_leaf), "an added CA reaches the store");

        // Added and removed before any chain needed it: never trusted.
        assert!(dir.update(&format!("{one}{two}{three}")).unwrap());
        assert!(dir.update(&format!("{one}{two}")).unwrap());
        assert!(!verifies(&store, &three_leaf));

        // Removed after a chain used it: the store still holds it (why a client whose
        // chains used a removed CA is rebuilt rather than updated).
        // A CA re-keyed under a name the store already loaded: the store never looks the
        // name up again, so it never sees the new one (why `update` refuses that change).
        let (one_again, one_again_leaf) = ca_and_leaf("one");
        let one_hash = openssl::x509::X509::from_pem(one.as_bytes())
            .unwrap()
            .subject_name_hash();
        fs::write(dir.path().join(format!("{one_hash:08x}.1")), &one_again).unwrap();
        assert!(
            !verifies(&store, &one_again_leaf),
            "a name loaded is not looked up again"
        );
        fs::remove_file(dir.path().join(format!("{one_hash:08x}.1"))).unwrap();

        assert!(dir.update(&two).unwrap());
        assert!(verifies(&store, &one_leaf), "OpenSSL keeps what it loaded");
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let two_hash = openssl::x509::X509::from_pem(two.as_bytes())
            .unwrap()
            .subject_name_hash();
        assert_eq!(
            names,
            vec![format!("{two_hash:08x}.0")],
            "only what is wanted"
        );
        // A new store over the same directory no longer trusts it.
        let mut builder = X509StoreBuilder::new().unwrap();
        builder
            .add_lookup(X509Lookup::hash_dir())
            .unwrap()
            .add_dir(dir.path().to_str().unwrap(), openssl::ssl::SslFiletype::PEM)
            .unwrap();
        assert!(!verifies(&builder.build(), &one_leaf));
    }

    #[test]
    fn a_change_within_one_name_is_refused_and_changes_nothing() {
        let dirs = CaDirs::default();
        // Same subject: same hash, suffixes .0 and .1; another name beside them.
        let (a, b, c, other) = (ca("same"), ca("same"), ca("same"), ca("other"));
        let dir = dirs.dir_for(&format!("{a}{b}{other}")).unwrap();
        let listing = || {
            let mut all: Vec<(String, Vec<u8>)> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        fs::read(e.path()).unwrap(),
                    )
                })
                .collect();
            all.sort();
            all
        };
        let before = listing();
        assert_eq!(before.len(), 3);
        // Re-keyed under the same name, one of the two removed, or one added to them.
        assert!(!dir.update(&format!("{a}{c}{other}")).unwrap());
        assert!(!dir.update(&format!("{b}{other}")).unwrap());
        assert!(!dir.update(&format!("{a}{b}{c}{other}")).unwrap());
        assert!(dir.update("not a certificate").is_err());
        assert_eq!(listing(), before, "nothing changed");
        // A whole name gone, or a new one: in place.
        assert!(dir.update(&format!("{a}{b}")).unwrap());
        assert_eq!(listing().len(), 2);
        assert!(dir.update(&format!("{a}{b}{other}")).unwrap());
        assert_eq!(listing().len(), 3);
    }

    #[test]
    fn a_bundle_that_is_not_pem_is_an_error() {
        assert!(CaDirs::default().dir_for("not a certificate").is_err());
    }
}
