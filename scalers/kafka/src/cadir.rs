//! The merged anchors as an OpenSSL hashed directory, for librdkafka's `ssl.ca.location`.
//!
//! Given the anchors as `ssl.ca.pem`, every librdkafka client parses the whole bundle
//! (about 150 system roots plus the custom CAs) into a trust store of its own: about
//! 1 MiB per client. Given a directory laid out as OpenSSL's `c_rehash` does
//! (`<subject-hash>.<n>` files), OpenSSL looks an issuer up by its name hash when a
//! chain needs it and loads only that certificate. The trust is the same; the memory
//! is not.
//!
//! The directories live in one private folder (mode 0700, random name), one subfolder
//! per distinct bundle, written completely before they are used and removed when the last
//! client that reads one is gone.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use trustscale::pool::SharedPool;

use sha2::{Digest, Sha256};

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
    _root: Arc<Root>,
}

impl CaDir {
    /// Where it is.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CaDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Hashed CA directories, one per distinct PEM bundle in use.
#[derive(Default)]
pub struct CaDirs {
    dirs: SharedPool<[u8; 32], CaDir>,
    root: Mutex<Weak<Root>>,
    written: AtomicU64,
}

impl CaDirs {
    /// The hashed directory holding every certificate of `pem`: the one in use, or a new
    /// one. Keep the handle as long as a client reads from the directory.
    pub fn dir_for(&self, pem: &str) -> io::Result<Arc<CaDir>> {
        let digest: [u8; 32] = Sha256::digest(pem.as_bytes()).into();
        self.dirs.try_get_or_insert_with(&digest, || {
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
            let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            let path = root.0.join(format!("{name}-{n}"));
            write_hashed(&path, pem)?;
            Ok(CaDir { path, _root: root })
        })
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

/// Writes every certificate of `pem` into `dir` as `<subject-hash>.<n>`: first into a
/// sibling folder, renamed into place once complete.
fn write_hashed(dir: &Path, pem: &str) -> io::Result<()> {
    let certs = openssl::x509::X509::stack_from_pem(pem.as_bytes())
        .map_err(|e| io::Error::other(format!("parsing the CA bundle: {e}")))?;
    if certs.is_empty() {
        return Err(io::Error::other("the CA bundle holds no certificate"));
    }
    let staging = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir(&staging)?;
    let mut used: HashMap<u32, u32> = HashMap::new();
    for cert in &certs {
        let hash = cert.subject_name_hash();
        let n = used.entry(hash).or_insert(0);
        let path = staging.join(format!("{hash:08x}.{n}"));
        *n += 1;
        let pem = cert
            .to_pem()
            .map_err(|e| io::Error::other(format!("encoding a CA certificate: {e}")))?;
        fs::File::create(&path)?.write_all(&pem)?;
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
        assert_eq!(again.path(), dir.path(), "shared while in use");
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

    #[test]
    fn a_bundle_that_is_not_pem_is_an_error() {
        assert!(CaDirs::default().dir_for("not a certificate").is_err());
    }
}
