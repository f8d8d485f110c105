//! `ticketing setup` and `ticketing keys extend`: deal keysets, write the public manifest and
//! one secret bundle per service.
//!
//! Layout of a cluster directory:
//!
//! ```text
//! manifest.json            public: the trust root (clients should pin its digest)
//! manifest.digest          public: hex SHA-256 digest of the manifest
//! products.toml            the products and their keyset windows (for `keys extend`)
//! secrets/                 0700
//!   node-<i>.json          0600: node i's identity key and its share of every keyset
//!   payments.json          0600: the receipt signing key
//!   coordinator.json       0600: the publication key
//! ```

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use ticketing_crypto::keyset::{
    self, KeysetId, KeysetParams, PublicKey, SecretKeyShare, ShareIndex,
};
use ticketing_protocol::keys::SignKey;
use ticketing_protocol::manifest::{
    KeysetInfo, Manifest, NodeInfo, PublicKeyShareInfo, ServiceInfo,
};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::ConfigError;
use crate::products::{ProductsFile, windows};

/// 32 secret bytes, hex in the bundle files. Redacted in Debug, zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, Serialize, Deserialize)]
pub struct Secret32(#[serde(with = "hex::serde")] [u8; 32]);

impl Secret32 {
    /// The bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&SignKey> for Secret32 {
    fn from(k: &SignKey) -> Self {
        Self(*k.to_bytes())
    }
}

/// One node's secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeBundle {
    /// The node's share index.
    pub index: ShareIndex,
    /// Ed25519 identity key seed.
    pub identity_key: Secret32,
    /// Its share of every keyset.
    pub shares: Vec<KeysetShare>,
}

/// A node's share of one keyset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysetShare {
    /// Which keyset.
    pub keyset_id: KeysetId,
    /// sk_i, big-endian.
    pub secret: Secret32,
}

impl NodeBundle {
    /// The identity signing key.
    pub fn identity(&self) -> Result<SignKey, ConfigError> {
        SignKey::from_bytes(self.identity_key.expose()).map_err(|e| ConfigError::BadFile {
            path: PathBuf::from("node bundle"),
            reason: e.to_string(),
        })
    }

    /// Check that this bundle is node `index`'s of `manifest`: its index, its identity key
    /// (the manifest's), and a share of every keyset not yet over at `now`. A node started
    /// with another node's bundle, an old bundle or a bundle of another cluster is refused
    /// here, before it serves anything.
    pub fn check_for(&self, manifest: &Manifest, index: u16, now: u64) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::BadFile {
            path: PathBuf::from(node_bundle_name(index)),
            reason,
        };
        if self.index.get() != index {
            return Err(bad(format!(
                "this is node {}'s bundle, not node {index}'s",
                self.index.get()
            )));
        }
        let listed = manifest
            .nodes
            .iter()
            .find(|n| n.index == self.index)
            .ok_or_else(|| bad(format!("the manifest has no node {index}")))?;
        if self.identity()?.verify_key() != listed.identity_key {
            return Err(bad(
                "its identity key is not the manifest's for this node (a bundle of another \
                 cluster or setup?)"
                    .into(),
            ));
        }
        let held: std::collections::HashSet<_> = self.shares.iter().map(|s| s.keyset_id).collect();
        let missing: Vec<String> = manifest
            .keysets
            .iter()
            .filter(|k| now < k.params.valid_until && !held.contains(&k.id))
            .map(|k| k.id.to_string())
            .collect();
        if let Some(first) = missing.first() {
            return Err(bad(format!(
                "no share of {} keyset(s) of the manifest that are not over (first: {first}); \
                 copy the bundle written with this manifest (`ticketing setup` or `keys extend`)",
                missing.len()
            )));
        }
        Ok(())
    }

    /// Decode every share and check each against this node's PK_i in the manifest (Feldman:
    /// the manifest's PK_i are derived from the dealer's commitments).
    pub fn verified_shares(
        &self,
        manifest: &Manifest,
    ) -> Result<Vec<(KeysetId, SecretKeyShare)>, ConfigError> {
        self.shares
            .iter()
            .map(|s| {
                let share = SecretKeyShare::from_bytes(self.index, s.secret.expose())?;
                let expected = manifest
                    .keyset(&s.keyset_id)
                    .and_then(|k| k.public_key_share(self.index))
                    .ok_or_else(|| ConfigError::BadFile {
                        path: PathBuf::from("node bundle"),
                        reason: format!("keyset {} is not in the manifest", s.keyset_id),
                    })?;
                if &share.public_key() != expected {
                    return Err(
                        ticketing_crypto::CryptoError::ShareVerification(self.index.get()).into(),
                    );
                }
                Ok((s.keyset_id, share))
            })
            .collect()
    }
}

/// A service's signing key (payments receipts, coordinator publications).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceBundle {
    /// Ed25519 seed.
    pub key: Secret32,
}

impl ServiceBundle {
    /// The signing key, checked against the key the manifest names for this service
    /// (`expected`), so a service started with another's bundle, or another cluster's, is
    /// refused before it signs anything.
    pub fn sign_key_for(
        &self,
        expected: &ticketing_protocol::keys::VerifyKey,
        file: &str,
    ) -> Result<SignKey, ConfigError> {
        let key = self.sign_key()?;
        if &key.verify_key() != expected {
            return Err(ConfigError::BadFile {
                path: PathBuf::from(file),
                reason: "its key is not the one the manifest names for this service (a bundle \
                         of another service or another cluster?)"
                    .into(),
            });
        }
        Ok(key)
    }

    /// The signing key.
    pub fn sign_key(&self) -> Result<SignKey, ConfigError> {
        SignKey::from_bytes(self.key.expose()).map_err(|e| ConfigError::BadFile {
            path: PathBuf::from("service bundle"),
            reason: e.to_string(),
        })
    }
}

/// A whole cluster, as `ticketing setup` makes it.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The public manifest.
    pub manifest: Manifest,
    /// The products with their windows.
    pub products: ProductsFile,
    /// One bundle per node, index order.
    pub nodes: Vec<NodeBundle>,
    /// The payments service's receipt key.
    pub payments: ServiceBundle,
    /// The coordinator's publication key.
    pub coordinator: ServiceBundle,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct SetupSpec {
    /// Node base URLs; n = their number.
    pub node_urls: Vec<String>,
    /// Threshold t.
    pub threshold: u16,
    /// Payments base URL.
    pub payments_url: String,
    /// Coordinator base URL.
    pub coordinator_url: String,
    /// Products.
    pub products: ProductsFile,
    /// Keysets are created for windows overlapping the next `horizon_days` days.
    pub horizon_days: u32,
    /// Presentation epoch length.
    pub rotation_seconds: u64,
    /// Clock skew every verifier tolerates (the manifest's `clock_skew_seconds`).
    pub clock_skew_seconds: u64,
    /// Current unix time.
    pub now: u64,
}

/// The longest horizon keysets are made for.
pub const MAX_HORIZON_DAYS: u32 = 3660;

/// Progress callback: (done, total) keysets.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Deal a new cluster.
pub fn generate(
    spec: &SetupSpec,
    rng: &mut impl rand_core::CryptoRng,
    progress: Progress<'_>,
) -> Result<Cluster, ConfigError> {
    check_spec(spec)?;
    let n = spec.node_urls.len();
    let identities: Vec<SignKey> = (0..n).map(|_| SignKey::generate(rng)).collect();
    let payments = SignKey::generate(rng);
    let coordinator = SignKey::generate(rng);
    let nodes_total = u16::try_from(n).map_err(|_| ConfigError::Invalid {
        key: "--nodes",
        reason: "too many nodes".into(),
    })?;
    let mut cluster = Cluster {
        manifest: first_manifest(spec, nodes_total, &identities, &payments, &coordinator)?,
        products: spec.products.clone(),
        nodes: node_bundles(&identities)?,
        payments: ServiceBundle {
            key: (&payments).into(),
        },
        coordinator: ServiceBundle {
            key: (&coordinator).into(),
        },
    };
    extend(&mut cluster, spec.horizon_days, spec.now, rng, progress)?;
    Ok(cluster)
}

/// Refuse a spec with a URL that is not http(s), no or too many nodes, or a threshold out of
/// range.
fn check_spec(spec: &SetupSpec) -> Result<(), ConfigError> {
    for url in spec
        .node_urls
        .iter()
        .chain([&spec.payments_url, &spec.coordinator_url])
    {
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return Err(ConfigError::Invalid {
                key: "--node-urls, --payments-url, --coordinator-url",
                reason: format!("`{url}` is not an http(s) URL such as http://10.0.0.5:7611"),
            });
        }
    }
    let n = spec.node_urls.len();
    if n == 0 || n > 1000 {
        return Err(ConfigError::Invalid {
            key: "--nodes",
            reason: format!("need between 1 and 1000 nodes, got {n}"),
        });
    }
    let t = usize::from(spec.threshold);
    if t < 1 || t > n {
        return Err(ConfigError::Invalid {
            key: "--threshold",
            reason: format!(
                "the threshold must be between 1 and the number of nodes ({n}), got {t}"
            ),
        });
    }
    Ok(())
}

/// The manifest before any keyset is dealt (version 0; [`extend`] makes it 1).
fn first_manifest(
    spec: &SetupSpec,
    nodes_total: u16,
    identities: &[SignKey],
    payments: &SignKey,
    coordinator: &SignKey,
) -> Result<Manifest, ConfigError> {
    Ok(Manifest {
        version: 0,
        nodes_total,
        threshold: spec.threshold,
        rotation_seconds: spec.rotation_seconds,
        clock_skew_seconds: spec.clock_skew_seconds,
        nodes: identities
            .iter()
            .zip(&spec.node_urls)
            .zip(1u16..)
            .map(|((k, url), i)| {
                Ok(NodeInfo {
                    index: ShareIndex::new(i)?,
                    url: url.trim_end_matches('/').to_owned(),
                    identity_key: k.verify_key(),
                })
            })
            .collect::<Result<_, ConfigError>>()?,
        keysets: Vec::new(),
        products: spec
            .products
            .product
            .iter()
            .map(crate::products::ProductSpec::to_manifest)
            .collect(),
        coordinator: ServiceInfo {
            url: spec.coordinator_url.trim_end_matches('/').to_owned(),
            key: coordinator.verify_key(),
        },
        payments: ServiceInfo {
            url: spec.payments_url.trim_end_matches('/').to_owned(),
            key: payments.verify_key(),
        },
    })
}

/// One bundle per node identity, index order, with no shares yet.
fn node_bundles(identities: &[SignKey]) -> Result<Vec<NodeBundle>, ConfigError> {
    identities
        .iter()
        .zip(1u16..)
        .map(|(k, i)| {
            Ok(NodeBundle {
                index: ShareIndex::new(i)?,
                identity_key: k.into(),
                shares: Vec::new(),
            })
        })
        .collect()
}

/// Add keysets for every product window overlapping `[now, now + horizon_days)` that the
/// cluster does not have yet. Existing keysets and shares are left exactly as they are.
/// Returns the number of keysets added; bumps the manifest version when any were.
pub fn extend(
    cluster: &mut Cluster,
    horizon_days: u32,
    now: u64,
    rng: &mut impl rand_core::CryptoRng,
    progress: Progress<'_>,
) -> Result<usize, ConfigError> {
    if !(1..=MAX_HORIZON_DAYS).contains(&horizon_days) {
        return Err(ConfigError::Invalid {
            key: "--horizon-days",
            reason: format!(
                "between 1 and {MAX_HORIZON_DAYS} days (keysets for ten years at most), got \
                 {horizon_days}"
            ),
        });
    }
    let mut todo = Vec::new();
    for p in &cluster.products.product {
        for (from, until) in windows(p.window, now, horizon_days) {
            let exists = cluster.manifest.keysets.iter().any(|k| {
                k.params.product == p.name
                    && k.params.valid_from == from
                    && k.params.valid_until == until
            });
            if !exists {
                todo.push(KeysetParams {
                    product: p.name.clone(),
                    valid_from: from,
                    valid_until: until,
                });
            }
        }
    }
    let n = cluster.nodes.len();
    let t = usize::from(cluster.manifest.threshold);
    let total = todo.len();
    for (done, params) in todo.into_iter().enumerate() {
        let dealt = keyset::deal(t, n, rng)?;
        let public_key = dealt.public_key()?;
        let id = KeysetId::derive(&public_key, &params);
        let mut shares_info = Vec::with_capacity(n);
        for (share, bundle) in dealt.shares.iter().zip(cluster.nodes.iter_mut()) {
            // deal() verified every share against the commitments already.
            shares_info.push(PublicKeyShareInfo {
                index: share.index(),
                public_key: dealt.commitments.public_key_share(share.index()),
            });
            bundle.shares.push(KeysetShare {
                keyset_id: id,
                secret: Secret32(*share.to_bytes()),
            });
        }
        let commitments = dealt
            .commitments
            .to_bytes()
            .iter()
            .map(|c| PublicKey::from_bytes(c))
            .collect::<Result<Vec<_>, _>>()?;
        cluster.manifest.keysets.push(KeysetInfo {
            id,
            params,
            public_key,
            public_key_shares: shares_info,
            commitments,
        });
        progress(done + 1, total);
    }
    if total > 0 {
        cluster.manifest.version += 1;
    }
    Ok(total)
}

const MANIFEST: &str = "manifest.json";
const DIGEST: &str = "manifest.digest";
const PRODUCTS: &str = "products.toml";
pub(crate) const SECRETS: &str = "secrets";

/// File name of node i's bundle (in `secrets/`, or `secrets_dir`).
pub fn node_bundle_name(index: u16) -> String {
    format!("node-{index}.json")
}

/// File name of the payments service's bundle.
pub const PAYMENTS_BUNDLE: &str = "payments.json";

/// File name of the coordinator's bundle.
pub const COORDINATOR_BUNDLE: &str = "coordinator.json";

/// Path of node i's bundle in a cluster directory.
pub fn node_bundle_path(dir: &Path, index: u16) -> PathBuf {
    dir.join(SECRETS).join(node_bundle_name(index))
}

/// Path of the payments service's bundle in a cluster directory.
pub fn payments_bundle_path(dir: &Path) -> PathBuf {
    dir.join(SECRETS).join(PAYMENTS_BUNDLE)
}

/// Path of the coordinator's bundle in a cluster directory.
pub fn coordinator_bundle_path(dir: &Path) -> PathBuf {
    dir.join(SECRETS).join(COORDINATOR_BUNDLE)
}

/// Path of the manifest in a cluster directory.
pub fn manifest_path(dir: &Path) -> PathBuf {
    dir.join(MANIFEST)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError + '_ {
    move |error| ConfigError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Write a file readable only by its owner (0600), replacing any old one atomically: a temp
/// file in the same directory is written and synced, then renamed over the target, and the
/// directory synced. A crash leaves either the old file or the new one, never a torn one.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        {
            // `mode` applies only at creation; tighten a leftover temp file too.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(io(path))
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

impl Cluster {
    /// Write to `dir`. Refuses a non-empty `dir` unless `force`.
    pub fn write(&self, dir: &Path, force: bool) -> Result<(), ConfigError> {
        let non_empty = fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
        if non_empty && !force {
            return Err(ConfigError::AlreadyExists(dir.to_owned()));
        }
        self.save(dir)
    }

    /// Write (or rewrite) every file of the cluster in `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), ConfigError> {
        let secrets = dir.join(SECRETS);
        fs::create_dir_all(&secrets).map_err(io(&secrets))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&secrets, fs::Permissions::from_mode(0o700))
                .map_err(io(&secrets))?;
        }
        for node in &self.nodes {
            write_private(&node_bundle_path(dir, node.index.get()), &to_json(node))?;
        }
        write_private(&secrets.join("payments.json"), &to_json(&self.payments))?;
        write_private(
            &secrets.join("coordinator.json"),
            &to_json(&self.coordinator),
        )?;
        let products = toml::to_string(&self.products).unwrap_or_default();
        let path = dir.join(PRODUCTS);
        fs::write(&path, products).map_err(io(&path))?;
        let path = dir.join(MANIFEST);
        fs::write(&path, to_json(&self.manifest)).map_err(io(&path))?;
        let path = dir.join(DIGEST);
        fs::write(&path, format!("{}\n", self.manifest.digest())).map_err(io(&path))
    }

    /// Read a cluster written by [`Cluster::write`] (all secrets: the setup machine only).
    pub fn read(dir: &Path) -> Result<Self, ConfigError> {
        let manifest = read_manifest(&dir.join(MANIFEST))?;
        let path = dir.join(PRODUCTS);
        let products = ProductsFile::parse(&fs::read_to_string(&path).map_err(io(&path))?)?;
        let nodes = manifest
            .nodes
            .iter()
            .map(|n| read_json(&node_bundle_path(dir, n.index.get())))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            payments: read_json(&payments_bundle_path(dir))?,
            coordinator: read_json(&coordinator_bundle_path(dir))?,
            manifest,
            products,
            nodes,
        })
    }
}

/// Read a JSON file into `T`, with the file named in any error.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let bytes = fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| ConfigError::BadFile {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Read a service's secret bundle, like [`read_json`]; a bundle other users may read (group or
/// world permission bits) is used but warned about, once per start: the key is as exposed as
/// the file. (Refusing would break secrets mounted read-only by an orchestrator.)
pub fn read_secret_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    if let Some(mode) = exposed_mode(path) {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "a secret bundle is readable by other users; `chmod 600` it"
        );
    }
    read_json(path)
}

/// The permission bits of `path` when group or others may read or write it (Unix).
fn exposed_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Read and check a manifest: every keyset id matches its key and window, and every keyset's
/// PK_i match its Feldman commitments (so any t nodes' partials combine under PK).
pub fn read_manifest(path: &Path) -> Result<Manifest, ConfigError> {
    if !path.exists() && path.file_name().is_some_and(|n| n == MANIFEST) {
        return Err(ConfigError::NoCluster(
            path.parent().map_or_else(PathBuf::new, Path::to_owned),
        ));
    }
    let manifest: Manifest = read_json(path)?;
    manifest.validate().map_err(|e| ConfigError::BadFile {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn spec(n: usize, t: u16) -> SetupSpec {
        SetupSpec {
            node_urls: (1..=n)
                .map(|i| format!("http://127.0.0.1:{}", 7610 + i))
                .collect(),
            threshold: t,
            payments_url: "http://127.0.0.1:7600".into(),
            coordinator_url: "http://127.0.0.1:7601".into(),
            products: ProductsFile::builtin(),
            horizon_days: 7,
            rotation_seconds: 30,
            clock_skew_seconds: 60,
            now: 1_795_266_000,
        }
    }

    /// Written bundles are private; a bundle opened up is still read, and flagged.
    #[cfg(unix)]
    #[test]
    fn exposed_secret_bundles_are_flagged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("bundle-mode-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let path = dir.join("b.json");
        write_private(&path, b"{}").unwrap();
        assert_eq!(exposed_mode(&path), None);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(exposed_mode(&path), Some(0o644));
        let _: serde_json::Value = read_secret_json(&path).unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    /// A bundle is accepted only as the node it was dealt to, with the manifest's identity key
    /// and a share of every keyset still to come; a service key only against its manifest key.
    #[test]
    fn bundles_are_checked_against_their_role_and_the_manifest() {
        let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(9);
        let s = spec(3, 2);
        let c = generate(&s, &mut rng, &mut |_, _| {}).unwrap();
        let m = &c.manifest;
        let now = s.now;
        c.nodes[0].check_for(m, 1, now).unwrap();
        let err = c.nodes[1].check_for(m, 1, now).unwrap_err().to_string();
        assert!(err.contains("node 2's bundle, not node 1's"), "{err}");

        let mut foreign = c.nodes[0].clone();
        foreign.identity_key = c.nodes[1].identity_key.clone();
        let err = foreign.check_for(m, 1, now).unwrap_err().to_string();
        assert!(err.contains("identity key"), "{err}");

        let mut short = c.nodes[0].clone();
        short.shares.truncate(1);
        let err = short.check_for(m, 1, now).unwrap_err().to_string();
        assert!(err.contains("no share of"), "{err}");
        // Keysets already over need no share.
        let last_end = m
            .keysets
            .iter()
            .map(|k| k.params.valid_until)
            .max()
            .unwrap();
        short.check_for(m, 1, last_end).unwrap();

        c.coordinator
            .sign_key_for(&m.coordinator.key, "coordinator.json")
            .unwrap();
        let err = c
            .payments
            .sign_key_for(&m.coordinator.key, "coordinator.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not the one the manifest names"), "{err}");
    }

    /// Out-of-range input is an error naming the flag, never an overflow or an endless loop.
    #[test]
    fn a_huge_horizon_or_a_non_http_url_is_refused() {
        let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(4);
        let mut s = spec(3, 2);
        s.horizon_days = 4_000_000_000;
        let e = generate(&s, &mut rng, &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("--horizon-days") && e.contains("3660"), "{e}");
        let mut s = spec(3, 2);
        s.node_urls[1] = "127.0.0.1:7612".into();
        let e = generate(&s, &mut rng, &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("127.0.0.1:7612") && e.contains("http"), "{e}");
        // The window arithmetic saturates on its own too.
        assert!(
            !crate::products::windows(crate::products::Window::Day, u64::MAX - 10, u32::MAX)
                .is_empty()
        );
    }

    /// The window on sale near a window's end (built-in minimums: single 10 min, day 2 h, week
    /// 1 day), with the clock injected: the next window is sold once the current one has less
    /// than the minimum left, never one further ahead, and nothing when the next is missing.
    #[test]
    fn the_next_window_is_sold_when_the_current_ends_within_the_minimum() {
        let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(3);
        // 2026-11-21 13:00 UTC, a Saturday; keysets for 3 days.
        let mut s = spec(3, 2);
        s.horizon_days = 3;
        let c = generate(&s, &mut rng, &mut |_, _| {}).unwrap();
        let m = &c.manifest;
        let midnight = 1_795_305_600; // 2026-11-22 00:00, end of today's day pass
        let window = |p: &str, at: u64| {
            m.on_sale(p, at)
                .map(|k| (k.params.valid_from, k.params.valid_until))
        };
        assert_eq!(
            window("day", midnight - 7201),
            Some((midnight - 86_400, midnight))
        );
        // 10 s before the end (and anywhere in the last 2 h): tomorrow's, at the full window.
        for at in [midnight - 7200, midnight - 10] {
            assert_eq!(
                window("day", at),
                Some((midnight, midnight + 86_400)),
                "{at}"
            );
        }
        let today = m
            .keysets
            .iter()
            .find(|k| k.params.product == "day" && k.params.valid_until == midnight)
            .unwrap();
        assert!(m.sellable(today, midnight - 7201));
        assert!(!m.sellable(today, midnight - 10));
        assert!(!m.sellable(today, midnight + 1));
        // Never two windows ahead.
        let after_tomorrow = m
            .keysets
            .iter()
            .find(|k| k.params.product == "day" && k.params.valid_from == midnight + 86_400)
            .unwrap();
        assert!(!m.sellable(after_tomorrow, midnight - 10));
        // The week ends Monday 00:00: this week's on Saturday, next week's from Sunday 00:00.
        let monday = midnight + 86_400;
        assert_eq!(
            window("week", 1_795_266_000),
            Some((monday - 7 * 86_400, monday))
        );
        assert_eq!(
            window("week", monday - 86_400),
            Some((monday, monday + 7 * 86_400))
        );
        // Singles: the last 10 minutes of November sell December's.
        let december = 1_796_083_200;
        assert_eq!(
            window("single", december - 601).map(|w| w.1),
            Some(december)
        );
        // The last keyset of the horizon: past it, nothing is on sale (not a short window).
        let last = m
            .keysets
            .iter()
            .filter(|k| k.params.product == "day")
            .map(|k| k.params.valid_until)
            .max()
            .unwrap();
        assert_eq!(window("day", last - 60), None);
    }

    #[test]
    fn setup_writes_a_verifiable_cluster_with_private_secrets() {
        let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(1);
        let mut calls = Vec::new();
        let cluster = generate(&spec(5, 3), &mut rng, &mut |d, t| calls.push((d, t))).unwrap();
        // 1 month of singles + 7 days + 2 weeks (Sat: this week and next).
        assert_eq!(cluster.manifest.keysets.len(), 1 + 7 + 2);
        assert_eq!(calls.last(), Some(&(10, 10)));
        let dir = tempfile::tempdir().unwrap();
        cluster.write(dir.path(), false).unwrap();

        let back = Cluster::read(dir.path()).unwrap();
        // The published commitments check out, and a tampered PK_i is caught on reading.
        for k in &back.manifest.keysets {
            k.check_commitments(3).unwrap();
        }
        let mut tampered = back.manifest.clone();
        let other = tampered.keysets[0].public_key_shares[1].public_key.clone();
        tampered.keysets[0].public_key_shares[0].public_key = other;
        fs::write(
            dir.path().join("bad.json"),
            serde_json::to_vec(&tampered).unwrap(),
        )
        .unwrap();
        let e = read_manifest(&dir.path().join("bad.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PK_1 does not match the commitments"), "{e}");
        assert_eq!(back.manifest, cluster.manifest);
        for node in &back.nodes {
            assert_eq!(node.verified_shares(&back.manifest).unwrap().len(), 10);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [
                "node-1.json",
                "node-5.json",
                "payments.json",
                "coordinator.json",
            ] {
                let mode = fs::metadata(dir.path().join("secrets").join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        let digest = fs::read_to_string(dir.path().join("manifest.digest")).unwrap();
        assert_eq!(digest.trim(), cluster.manifest.digest().to_string());
        // Secrets do not leak through Debug.
        let dbg = format!("{:?}", back.nodes[0]);
        assert!(
            !dbg.contains(&hex::encode(back.nodes[0].identity_key.expose())),
            "{dbg}"
        );
    }

    #[test]
    fn setup_refuses_bad_thresholds_and_existing_clusters() {
        let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(2);
        let e = generate(&spec(3, 4), &mut rng, &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("between 1 and the number of nodes (3), got 4"),
            "{e}"
        );
        let e = generate(&spec(3, 0), &mut rng, &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("got 0"), "{e}");
        let c = generate(&spec(2, 2), &mut rng, &mut |_, _| {}).unwrap();
        let dir = tempfile::tempdir().unwrap();
        c.write(dir.path(), false).unwrap();
        let e = c.write(dir.path(), false).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        c.write(dir.path(), true).unwrap();
    }

    #[test]
    fn a_share_that_does_not_match_the_manifest_is_refused() {
        let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(3);
        let mut c = generate(&spec(3, 2), &mut rng, &mut |_, _| {}).unwrap();
        let other = c.nodes[1].shares[0].secret.clone();
        c.nodes[0].shares[0].secret = other;
        let e = c.nodes[0]
            .verified_shares(&c.manifest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("share 1 does not match"), "{e}");
    }

    #[test]
    fn extend_adds_future_keysets_and_keeps_the_old_ones() {
        let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(4);
        let s = spec(3, 2);
        let mut c = generate(&s, &mut rng, &mut |_, _| {}).unwrap();
        let before = c.manifest.clone();
        let old_shares: Vec<_> = c
            .nodes
            .iter()
            .map(|n| serde_json::to_string(n).unwrap())
            .collect();
        let added = extend(&mut c, 40, s.now, &mut rng, &mut |_, _| {}).unwrap();
        assert!(added > 0);
        assert_eq!(c.manifest.version, before.version + 1);
        assert_eq!(
            &c.manifest.keysets[..before.keysets.len()],
            &before.keysets[..]
        );
        for (node, old) in c.nodes.iter().zip(old_shares) {
            let old: NodeBundle = serde_json::from_str(&old).unwrap();
            for (a, b) in old.shares.iter().zip(&node.shares) {
                assert_eq!(a.keyset_id, b.keyset_id);
                assert_eq!(a.secret.expose(), b.secret.expose());
            }
            assert_eq!(
                node.verified_shares(&c.manifest).unwrap().len(),
                c.manifest.keysets.len()
            );
        }
        // Extending again to the same horizon adds nothing and keeps the version.
        assert_eq!(
            extend(&mut c, 40, s.now, &mut rng, &mut |_, _| {}).unwrap(),
            0
        );
        assert_eq!(c.manifest.version, before.version + 1);
    }
}
