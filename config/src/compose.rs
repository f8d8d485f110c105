//! What `docker-compose.yml` needs beside the cluster: `ticketing setup --compose DIR` writes
//! it into the directory compose runs from.
//!
//! ```text
//! DIR/.env                          uid/gid the services run as, the HTTPS port (not secret)
//! DIR/cluster/manifest.json ...     the cluster as `ticketing setup` writes it
//! DIR/cluster/secrets/node-<i>.json one bundle per node (only node-<i> mounts it)
//! DIR/cluster/secrets/<svc>-db      each service's database URL with its own role's password
//! DIR/cluster/secrets/postgres-*    the superuser password and the script creating the roles
//! DIR/cluster/tls/ca.pem            a CA made for this deployment (install it on devices)
//! DIR/cluster/tls/cert.pem          nginx's certificate for the public host, signed by it
//! DIR/cluster/secrets/tls-key.pem   its private key
//! ```
//!
//! The manifest's URLs are the public ones (`https://HOST/node/<i>`, `.../payments`,
//! `.../coordinator`), which nginx routes to the services on the compose network.

use std::fs;
use std::path::Path;

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::ConfigError;
use crate::cluster::{Cluster, SECRETS, write_private};

/// The nodes `docker-compose.yml` runs (`node-1` .. `node-5`).
pub const NODES: u16 = 5;

/// The user a container runs as when setup ran as root (the image's `ticketing` user).
pub const DEFAULT_UID: u32 = 10001;

/// The public base URLs of the services behind nginx at `public_url` (`https://host[:port]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrls {
    /// `public_url/node/<i>`, i = 1..=n.
    pub nodes: Vec<String>,
    /// `public_url/payments`.
    pub payments: String,
    /// `public_url/coordinator`.
    pub coordinator: String,
}

/// Check `public_url` (an `https://` origin, no path) and derive the services' URLs from it.
pub fn public_urls(public_url: &str, nodes: u16) -> Result<PublicUrls, ConfigError> {
    let base = public_url.trim_end_matches('/');
    host_and_port(base)?;
    Ok(PublicUrls {
        nodes: (1..=nodes).map(|i| format!("{base}/node/{i}")).collect(),
        payments: format!("{base}/payments"),
        coordinator: format!("{base}/coordinator"),
    })
}

/// The host and port of an `https://host[:port]` origin.
fn host_and_port(origin: &str) -> Result<(String, u16), ConfigError> {
    let bad = |reason: &str| ConfigError::Invalid {
        key: "--public-url",
        reason: format!("`{origin}` {reason}"),
    };
    let rest = origin
        .strip_prefix("https://")
        .ok_or_else(|| bad("must start with https:// (phones need it for the camera)"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(bad(
            "must be an origin, https://host[:port], without a path",
        ));
    }
    // `[v6]:port`, `host:port`, `host`.
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => (
            h.to_owned(),
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("has a port that is not a number from 1 to 65535"))?,
        ),
        _ => (rest.to_owned(), 443),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, port))
}

/// One Postgres role and database per service: (compose service, role = database name).
fn databases() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = (1..=NODES)
        .map(|i| (format!("node-{i}"), format!("node{i}")))
        .collect();
    out.push(("payments".into(), "payments".into()));
    out.push(("coordinator".into(), "coordinator".into()));
    out
}

/// Write the compose side of a deployment into `dir`: `cluster` goes to `dir/cluster` (as
/// [`Cluster::write`], refusing an existing one unless `force`), then the database roles and
/// URLs, the TLS files and `.env`. Run as root, the files are handed to [`DEFAULT_UID`] (the
/// services' user); otherwise the services run as the user who ran setup.
pub fn write(
    dir: &Path,
    cluster: &Cluster,
    public_url: &str,
    force: bool,
    now: u64,
    rng: &mut impl CryptoRng,
) -> Result<(), ConfigError> {
    let (host, port) = host_and_port(public_url.trim_end_matches('/'))?;
    let out = dir.join("cluster");
    cluster.write(&out, force)?;
    let secrets = out.join(SECRETS);

    let password = |rng: &mut dyn CryptoRng| {
        let mut bytes = Zeroizing::new([0u8; 24]);
        rng.fill_bytes(bytes.as_mut());
        Zeroizing::new(hex::encode(bytes.as_ref()))
    };
    let mut init = Zeroizing::new(String::from(
        "-- Written by `ticketing setup --compose`: one role and one database per service, \
         each reachable only by its owner.\n",
    ));
    for (service, role) in databases() {
        let pw = password(rng);
        init.push_str(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{}';\nCREATE DATABASE {role} OWNER {role};\n\
             REVOKE ALL ON DATABASE {role} FROM PUBLIC;\n",
            pw.as_str()
        ));
        let url = Zeroizing::new(format!(
            "postgres://{role}:{}@postgres:5432/{role}",
            pw.as_str()
        ));
        write_private(&secrets.join(format!("{service}-db")), url.as_bytes())?;
    }
    write_private(&secrets.join("postgres-init.sql"), init.as_bytes())?;
    write_private(&secrets.join("postgres-password"), password(rng).as_bytes())?;

    let tls = out.join("tls");
    fs::create_dir_all(&tls).map_err(|error| ConfigError::Io {
        path: tls.clone(),
        error,
    })?;
    let made = certificates(&host, now)?;
    public_file(&tls.join("ca.pem"), made.ca.as_bytes())?;
    public_file(&tls.join("cert.pem"), made.chain.as_bytes())?;
    write_private(&secrets.join("tls-key.pem"), made.key.as_bytes())?;

    let owner = owner_of(&out)?;
    let (uid, gid) = if owner.0 == 0 {
        (DEFAULT_UID, DEFAULT_UID)
    } else {
        owner
    };
    let env = format!(
        "# Written by `ticketing setup --compose`; docker compose reads it from this directory.\n\
         # The services run as this user, who owns cluster/ (its secrets are 0600).\n\
         TICKETING_UID={uid}\nTICKETING_GID={gid}\n\
         # The public URL's port (the manifest's URLs use it): nginx's HTTPS port on the host.\n\
         TICKETING_HTTPS_PORT={port}\n"
    );
    public_file(&dir.join(".env"), env.as_bytes())?;
    if owner.0 == 0 {
        chown_tree(&out, uid, gid)?;
    }
    Ok(())
}

/// After root rewrote files in a cluster directory owned by someone else (`sudo ticketing
/// keys extend` in a compose deployment), give them back to the directory's owner: the
/// services run as that user and could not read a root-owned secret (mode 0600).
pub fn keep_owner(cluster_dir: &Path) -> Result<(), ConfigError> {
    let (uid, gid) = owner_of(cluster_dir)?;
    chown_tree(cluster_dir, uid, gid)
}

fn public_file(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    fs::write(path, bytes).map_err(|error| ConfigError::Io {
        path: path.to_owned(),
        error,
    })
}

#[cfg(unix)]
fn owner_of(path: &Path) -> Result<(u32, u32), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).map_err(|error| ConfigError::Io {
        path: path.to_owned(),
        error,
    })?;
    Ok((meta.uid(), meta.gid()))
}

#[cfg(not(unix))]
fn owner_of(_: &Path) -> Result<(u32, u32), ConfigError> {
    Ok((DEFAULT_UID, DEFAULT_UID))
}

#[cfg(unix)]
fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), ConfigError> {
    let io = |error| ConfigError::Io {
        path: path.to_owned(),
        error,
    };
    // Only what differs: a user who is not root may run this over their own files.
    if owner_of(path)? != (uid, gid) {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io)?;
    }
    if path.is_dir() {
        for entry in fs::read_dir(path).map_err(io)? {
            chown_tree(&entry.map_err(io)?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn chown_tree(_: &Path, _: u32, _: u32) -> Result<(), ConfigError> {
    Ok(())
}

/// The TLS files, PEM.
struct Certificates {
    /// The deployment's own CA (public: devices install it).
    ca: String,
    /// The server certificate for the host, then the CA.
    chain: String,
    /// The server certificate's key.
    key: Zeroizing<String>,
}

/// A CA for this deployment and a server certificate for `host` signed by it (a CA rather than
/// one self-signed certificate: a phone or a validator installs the CA once, and TLS libraries
/// that refuse a self-signed leaf as their own anchor accept it).
fn certificates(host: &str, now: u64) -> Result<Certificates, ConfigError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let tls = |e: rcgen::Error| ConfigError::Invalid {
        key: "--public-url",
        reason: format!("making the TLS certificate: {e}"),
    };
    let start = time::OffsetDateTime::from_unix_timestamp(i64::try_from(now).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        - time::Duration::days(1);

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, format!("ticketing CA for {host}"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = start;
    ca.not_after = start + time::Duration::days(3650);
    let ca_key = KeyPair::generate().map_err(tls)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(tls)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec![host.to_owned()]).map_err(tls)?;
    leaf.distinguished_name.push(DnType::CommonName, host);
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = start;
    // Apple devices refuse server certificates valid for longer than 825 days.
    leaf.not_after = start + time::Duration::days(397);
    let leaf_key = KeyPair::generate().map_err(tls)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(tls)?;

    Ok(Certificates {
        chain: format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        ca: ca_cert.pem(),
        key: Zeroizing::new(leaf_key.serialize_pem()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_come_from_an_https_origin() {
        let urls = public_urls("https://tickets.example.org/", 2).unwrap();
        assert_eq!(
            urls.nodes,
            [
                "https://tickets.example.org/node/1",
                "https://tickets.example.org/node/2"
            ]
        );
        assert_eq!(urls.payments, "https://tickets.example.org/payments");
        assert_eq!(
            host_and_port("https://10.0.0.5:8443").unwrap(),
            ("10.0.0.5".to_owned(), 8443)
        );
        assert_eq!(
            host_and_port("https://[fd00::5]").unwrap(),
            ("fd00::5".to_owned(), 443)
        );
        for bad in [
            "http://tickets.example.org",
            "https://tickets.example.org/app",
            "https://tickets.example.org:0",
            "https://tickets.example.org:http",
            "https://",
        ] {
            let e = public_urls(bad, 5)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("--public-url"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_certificate_names_the_host_and_is_signed_by_the_ca() {
        let made = certificates("tickets.example.org", 1_800_000_000).unwrap();
        assert_eq!(made.chain.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(made.chain.ends_with(&made.ca));
        assert!(made.key.contains("PRIVATE KEY"));
        // An IP address is a valid name too (a LAN demo without DNS).
        certificates("192.168.1.20", 1_800_000_000).unwrap();
    }
}
