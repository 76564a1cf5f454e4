//! The files a config names besides itself (certificates, keys, CA files)
//! as one load read them: each path with a digest of its bytes, which
//! `server.watch_config` compares with what the file holds now, so that a
//! certificate renewed in place is reloaded as an edited config is.

use std::cell::RefCell;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

/// Each file a load read, in the order read, with a digest of what it held
/// then; `None`: the load could not read it (and failed there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileDigests(Vec<(PathBuf, Option<u64>)>);

impl FileDigests {
    /// The first file that holds other bytes now than the load read, or
    /// that can be read now and could not be then. One that cannot be read
    /// now is taken as unchanged: it may be being replaced, and is looked
    /// at again next time.
    pub fn changed(&self) -> Option<&Path> {
        self.0
            .iter()
            .find(|(path, then)| std::fs::read(path).is_ok_and(|now| *then != Some(digest(&now))))
            .map(|(path, _)| path.as_path())
    }
}

/// Reads the files of one load (through `certs::read`) and keeps their
/// digests.
#[derive(Default)]
pub(super) struct FileReader(RefCell<FileDigests>);

impl FileReader {
    pub(super) fn read(&self, path: &Path) -> Result<Vec<u8>, String> {
        let bytes = crate::certs::read(path);
        let seen = bytes.as_ref().ok().map(|b| digest(b));
        self.0.borrow_mut().0.push((path.to_path_buf(), seen));
        bytes
    }

    pub(super) fn into_digests(self) -> FileDigests {
        self.0.into_inner()
    }
}

/// Tells contents apart; not a defence against a forged file (whoever
/// can write the certificate can write the config).
fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    /// A load reads the listener's certificate and key, its client CA and
    /// an upstream's CA through the reader; a load that fails on a missing
    /// key keeps it, so that its coming watches as a change.
    #[test]
    fn a_load_keeps_every_certificate_key_and_ca_file_it_read() {
        let dir = std::env::temp_dir().join(format!("ringway-load-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = file("a.pem", &leaf.pem());
        let client_ca = file("clients.pem", &ca.pem());
        let upstream_ca = file("upstream.pem", &ca.pem());
        let key_path = dir.join("a.key");
        let _ = std::fs::remove_file(&key_path);
        let text = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\
             tls = { certificates = [{ cert = \"a.pem\", key = \"a.key\" }], client_ca = \"clients.pem\" }\n\
             [[upstream]]\nname = \"u\"\nendpoints = [\"127.0.0.1:9\"]\ntls = { ca = \"upstream.pem\" }\n";
        let config_path = dir.join("t.toml");

        let (failed, files) = Config::parse_reading(&config_path, text);
        assert!(failed.is_err());
        let read: Vec<&Path> = files.0.iter().map(|(p, _)| p.as_path()).collect();
        assert_eq!(read, [cert.as_path(), key_path.as_path()]);
        assert_eq!(files.changed(), None);
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        assert_eq!(files.changed(), Some(key_path.as_path()));

        let (config, files) = Config::parse_reading(&config_path, text);
        let config = config.unwrap();
        assert_eq!(config.files, files);
        let read: Vec<&Path> = files.0.iter().map(|(p, _)| p.as_path()).collect();
        let all = [&cert, &key_path, &client_ca, &upstream_ca];
        assert_eq!(read, all.map(|p| p.as_path()));
        assert_eq!(files.changed(), None);
        std::fs::write(&upstream_ca, format!("{}\n", ca.pem())).unwrap();
        assert_eq!(files.changed(), Some(upstream_ca.as_path()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_rewritten_in_place_or_come_back_is_changed_and_a_missing_one_is_not() {
        let dir = std::env::temp_dir().join(format!("ringway-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.pem"), dir.join("b.pem"));
        std::fs::write(&a, "one").unwrap();
        let _ = std::fs::remove_file(&b);
        let reader = FileReader::default();
        assert!(reader.read(&a).is_ok());
        assert!(reader.read(&b).is_err());
        let digests = reader.into_digests();
        assert_eq!(digests.changed(), None);
        // The same bytes written again are no change.
        std::fs::write(&a, "one").unwrap();
        assert_eq!(digests.changed(), None);
        std::fs::write(&a, "two").unwrap();
        assert_eq!(digests.changed(), Some(a.as_path()));
        // Gone for a moment while it is replaced: not a change yet.
        std::fs::remove_file(&a).unwrap();
        assert_eq!(digests.changed(), None);
        // A file the load could not read, there now.
        std::fs::write(&b, "").unwrap();
        assert_eq!(digests.changed(), Some(b.as_path()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
