//! The one implementation of "talk to the cluster", native and wasm32 (reqwest on both).
//!
//! Buying ([`Client::buy`]): pick the product's current keyset from the manifest, blind one
//! ticket message per holder key, pay (a receipt bound to the digest of the blinded points),
//! then ask **all** nodes at once. As responses arrive (each checked against the node's
//! identity key), the first t are combined, unblinded and verified; only if a ticket fails to
//! verify are the partials checked one by one, the bad node blamed with its signed response
//! as evidence, and another node's answer used. A purchase that cannot reach t nodes returns
//! its [`PendingPurchase`] (receipt + blinding factors) so the same receipt can be retried
//! later ([`Client::complete`]): nothing paid is lost.

use std::time::Duration;

#[cfg(target_arch = "wasm32")]
pub mod browser;
pub mod clock;
pub mod coordinator;
pub mod http;
#[cfg(target_arch = "wasm32")]
pub mod idb;
pub mod validator;
pub mod wallet;
pub use coordinator::CoordinatorClient;
pub use http::Http;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use ticketing_crypto::issuance::{self, BlindedPoint, BlindingFactor, PartialSignature};
use ticketing_crypto::keyset::{KeysetId, ShareIndex};
use ticketing_crypto::ticket::{HolderPublicKey, Ticket};
pub use ticketing_protocol::issue::Blame;
use ticketing_protocol::issue::{IssueRequest, IssueResponse};
use ticketing_protocol::manifest::{KeysetInfo, Manifest, ManifestError, NodeInfo};
use ticketing_protocol::receipt::{CheckoutRequest, PaymentMethod, SignedReceipt, blinded_digest};
use ticketing_protocol::{ErrorBody, ErrorCode};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The manifest has no such product.
    #[error("no product `{product}`; the products are: {known}")]
    UnknownProduct {
        /// Product asked for.
        product: String,
        /// The manifest's product names.
        known: String,
    },
    /// The manifest has no keyset of this product on sale now.
    #[error(
        "no keyset of product `{product}` is on sale at {now} (unix seconds): the window on \
         sale is not in the manifest (the operator runs `ticketing keys extend`)"
    )]
    NoKeyset {
        /// Product asked for.
        product: String,
        /// Time asked at.
        now: u64,
    },
    /// A service answered with an error body.
    #[error("{service} refused: {} ({})", .body.detail, .body.code)]
    Refused {
        /// Which service.
        service: String,
        /// Its answer.
        body: ErrorBody,
    },
    /// A service could not be reached: no answer at all (connection, timeout). Temporary.
    #[error("{service}: {reason}")]
    Unreachable {
        /// Which service.
        service: String,
        /// What happened.
        reason: String,
    },
    /// The request was certainly not acted on: no connection could be made (native builds
    /// can tell; a browser's fetch cannot), or the service answered 429 before looking at it.
    /// Temporary; after a payment request, nothing was charged.
    #[error("{service} did not take the request: {reason}")]
    NotTaken {
        /// Which service.
        service: String,
        /// What happened.
        reason: String,
    },
    /// A service answered "not now" (5xx, 408) or nonsense. Temporary.
    #[error("{service} is unavailable: {reason}")]
    Unavailable {
        /// Which service.
        service: String,
        /// What happened.
        reason: String,
    },
    /// The manifest is invalid or not the pinned one (`manifest_mismatch`).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The wallet's or validator's storage failed (file, IndexedDB).
    #[error("storage: {0}")]
    Store(String),
    /// A holder key could not be made or used (WebCrypto, a stored secret).
    #[error("holder key: {0}")]
    HolderKey(String),
    /// The payments service returned a receipt that does not match what was asked.
    #[error("the receipt does not match the request: {0}")]
    BadReceipt(String),
    /// Fewer than t nodes gave good answers. `pending` can be retried with
    /// [`Client::complete`].
    #[error("only {good} of the {needed} nodes needed answered correctly; unreachable or refusing: {}", describe(.failures))]
    NotEnoughNodes {
        /// Threshold.
        needed: usize,
        /// Good answers.
        good: usize,
        /// Per failing node: index, URL and what went wrong.
        failures: Vec<NodeFailure>,
        /// Everything needed to retry with the same receipt.
        pending: Box<PendingPurchase>,
    },
}

impl ClientError {
    /// Whether retrying later may succeed (unreachable or unavailable service).
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::NotTaken { .. } | Self::Unavailable { .. }
        )
    }

    /// The stable code of a refusal (or of a manifest problem).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Refused { body, .. } => Some(body.code),
            Self::Manifest(e) => Some(e.code()),
            _ => None,
        }
    }
}

fn describe(failures: &[NodeFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("node {} at {} ({})", f.node, f.url, f.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A node that did not contribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFailure {
    /// Index.
    pub node: u16,
    /// Base URL.
    pub url: String,
    /// Why.
    pub reason: String,
}

/// A purchase blinded but not yet paid. Holds secrets (blinding factors).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreparedPurchase {
    /// Product name.
    pub product: String,
    /// The keyset the points are blinded for.
    pub keyset_id: KeysetId,
    /// The holder keys, in order.
    pub holders: Vec<HolderPublicKey>,
    /// The blinded points, in order.
    pub blinded: Vec<BlindedPoint>,
    /// The blinding factors, in order.
    pub factors: Vec<FactorHex>,
}

/// A paid purchase not yet turned into tickets. Holds secrets (blinding factors): keep it
/// where the wallet keeps tickets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingPurchase {
    /// The payment receipt.
    pub receipt: SignedReceipt,
    /// The holder keys, in order.
    pub holders: Vec<HolderPublicKey>,
    /// The blinded points, in order.
    pub blinded: Vec<BlindedPoint>,
    /// The blinding factors (hex), in order.
    pub factors: Vec<FactorHex>,
}

/// A blinding factor as stored in a pending purchase.
#[derive(Clone, Serialize, Deserialize)]
pub struct FactorHex(#[serde(with = "hex::serde")] Vec<u8>);

impl std::fmt::Debug for FactorHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The result of a purchase.
#[derive(Debug, Clone)]
pub struct Purchase {
    /// One verified ticket per holder key, in order.
    pub tickets: Vec<Ticket>,
    /// Nodes caught signing wrong partials, with evidence.
    pub blamed: Vec<Blame>,
    /// Nodes that could not be reached or refused (not needed in the end).
    pub failures: Vec<NodeFailure>,
}

/// What happens to each node during [`Client::complete_with`], for a progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// The request was sent to every node.
    Asked {
        /// The nodes asked, in manifest order.
        nodes: Vec<u16>,
    },
    /// A node gave a well-formed, signed answer.
    Answered {
        /// Node index.
        node: u16,
    },
    /// A node failed (unreachable, refused, or caught signing wrong partials).
    Failed(NodeFailure),
}

/// A client bound to one manifest.
#[derive(Debug, Clone)]
pub struct Client {
    http: Http,
    manifest: Manifest,
}

/// Fetch the manifest a cluster publishes (`GET {url}/v1/manifest` of a node or the
/// coordinator), check it ([`Manifest::validate`]) and, when a digest is pinned, that it is the
/// pinned one (`manifest_mismatch` otherwise).
pub async fn fetch_manifest(
    http: &Http,
    base_url: &str,
    pinned: Option<&ticketing_protocol::Digest32>,
) -> Result<Manifest, ClientError> {
    let url = format!("{}/v1/manifest", base_url.trim_end_matches('/'));
    let bytes = http.get_bytes("manifest", &url).await?;
    Ok(Manifest::parse_pinned(&bytes, pinned)?)
}

impl Client {
    /// A client with a per-request timeout (native; browsers use their own fetch limits).
    /// The manifest is checked ([`Manifest::validate`]) before it is trusted.
    pub fn new(manifest: Manifest, timeout: Duration) -> Result<Self, ClientError> {
        manifest
            .validate()
            .map_err(|e| ClientError::Manifest(ManifestError::Invalid(e)))?;
        Ok(Self {
            http: Http::new(timeout)?,
            manifest,
        })
    }

    /// A client for a manifest the caller has already checked: validated, or matching a pinned
    /// digest ([`Manifest::parse_pinned`]). Skips [`Manifest::validate`], which costs seconds
    /// in a browser's wasm.
    pub fn for_checked(manifest: Manifest, timeout: Duration) -> Result<Self, ClientError> {
        Ok(Self {
            http: Http::new(timeout)?,
            manifest,
        })
    }

    /// The HTTP layer (shared with the coordinator client and the auditor).
    pub fn http(&self) -> &Http {
        &self.http
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The keyset of `product` on sale at `now` ([`Manifest::on_sale`]: the current window,
    /// or the next one once the current has less than the product's minimum left). What a
    /// wallet shows before payment and buys.
    pub fn keyset_on_sale(&self, product: &str, now: u64) -> Result<&KeysetInfo, ClientError> {
        if self.manifest.product(product).is_none() {
            return Err(ClientError::UnknownProduct {
                product: product.to_owned(),
                known: self.manifest.product_names(),
            });
        }
        self.manifest
            .on_sale(product, now)
            .ok_or_else(|| ClientError::NoKeyset {
                product: product.to_owned(),
                now,
            })
    }

    /// Buy one ticket per holder key: prepare, pay, then issue. See the crate docs.
    pub async fn buy(
        &self,
        product: &str,
        holders: &[HolderPublicKey],
        payment: PaymentMethod,
        now: u64,
        rng: &mut impl rand_core::CryptoRng,
    ) -> Result<Purchase, ClientError> {
        let prepared = self.prepare(product, holders, now, rng)?;
        let pending = self.checkout(&prepared, payment).await?;
        self.complete(&pending).await
    }

    /// Pick the keyset and blind one message per holder key. Local only: a wallet stores the
    /// result before paying, so a crash after payment can redo [`Client::checkout`] with the
    /// same points (the payments service answers the same digest with the same receipt).
    pub fn prepare(
        &self,
        product: &str,
        holders: &[HolderPublicKey],
        now: u64,
        rng: &mut impl rand_core::CryptoRng,
    ) -> Result<PreparedPurchase, ClientError> {
        let keyset_id = self.keyset_on_sale(product, now)?.id;
        let (blinded, factors): (Vec<_>, Vec<_>) = holders
            .iter()
            .map(|h| issuance::blind(&keyset_id, h, rng))
            .unzip();
        Ok(PreparedPurchase {
            product: product.to_owned(),
            keyset_id,
            holders: holders.to_vec(),
            blinded,
            factors: factors
                .iter()
                .map(|f| FactorHex(f.to_bytes().to_vec()))
                .collect(),
        })
    }

    /// Pay for a prepared purchase; returns it with the receipt, ready for the nodes.
    pub async fn checkout(
        &self,
        prepared: &PreparedPurchase,
        payment: PaymentMethod,
    ) -> Result<PendingPurchase, ClientError> {
        // The payments service sees only the digest: repeated points are caught here, before
        // anything is paid (every node would refuse them: `duplicate_point`).
        if let Some(i) = ticketing_protocol::receipt::first_duplicate(&prepared.blinded) {
            return Err(ClientError::Refused {
                service: "wallet".into(),
                body: ErrorBody::new(
                    ErrorCode::DuplicatePoint,
                    format!(
                        "blinded point {} repeats an earlier one; nothing was paid",
                        i + 1
                    ),
                ),
            });
        }
        let digest = blinded_digest(&prepared.blinded);
        let count = u32::try_from(prepared.holders.len())
            .map_err(|_| ClientError::BadReceipt("too many tickets".into()))?;
        let request = CheckoutRequest {
            product: prepared.product.clone(),
            keyset_id: prepared.keyset_id,
            count,
            digest,
            payment,
        };
        let url = format!("{}/v1/checkout", self.manifest.payments.url);
        let receipt: SignedReceipt = self.http.post("payments", &url, &request, None).await?;
        receipt
            .verify(&self.manifest.payments.key)
            .map_err(|e| ClientError::BadReceipt(e.to_string()))?;
        let r = &receipt.receipt;
        if r.digest != digest || r.count != count || r.keyset_id != prepared.keyset_id {
            return Err(ClientError::BadReceipt(
                "digest, count or keyset differ".into(),
            ));
        }
        Ok(PendingPurchase {
            receipt,
            holders: prepared.holders.clone(),
            blinded: prepared.blinded.clone(),
            factors: prepared.factors.clone(),
        })
    }

    /// Ask the payments service for the receipt of a prepared purchase (by its digest, which
    /// only this wallet knows). `None`: it was never paid. An expired receipt comes back
    /// renewed, so a purchase interrupted by a long outage can still be completed.
    pub async fn find_receipt(
        &self,
        prepared: &PreparedPurchase,
    ) -> Result<Option<PendingPurchase>, ClientError> {
        let digest = blinded_digest(&prepared.blinded);
        let url = format!("{}/v1/receipts/{digest}", self.manifest.payments.url);
        let receipt: SignedReceipt = match self.http.get("payments", &url, &[], None).await {
            Ok(r) => r,
            Err(ClientError::Refused { body, .. }) if body.code == ErrorCode::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        receipt
            .verify(&self.manifest.payments.key)
            .map_err(|e| ClientError::BadReceipt(e.to_string()))?;
        let r = &receipt.receipt;
        if r.digest != digest
            || r.keyset_id != prepared.keyset_id
            || r.count as usize != prepared.holders.len()
        {
            return Err(ClientError::BadReceipt(
                "digest, count or keyset differ".into(),
            ));
        }
        Ok(Some(PendingPurchase {
            receipt,
            holders: prepared.holders.clone(),
            blinded: prepared.blinded.clone(),
            factors: prepared.factors.clone(),
        }))
    }

    /// Ask one node only (benchmarks, diagnostics). The answer is checked like in
    /// [`Client::complete`].
    pub async fn issue_at(
        &self,
        index: ShareIndex,
        pending: &PendingPurchase,
    ) -> Result<IssueResponse, ClientError> {
        let node = self
            .manifest
            .nodes
            .iter()
            .find(|n| n.index == index)
            .ok_or_else(|| ClientError::Unreachable {
                service: format!("node {index}"),
                reason: "not in the manifest".into(),
            })?;
        let request = IssueRequest {
            receipt: pending.receipt.clone(),
            blinded: pending.blinded.clone(),
        };
        let (_, outcome) = self.ask_node(node, &request).await;
        outcome
            .map(|(response, _)| response)
            .map_err(|reason| ClientError::Unreachable {
                service: format!("node {index}"),
                reason,
            })
    }

    /// Turn a paid purchase into tickets: ask every node, combine the first t good answers.
    /// Safe to call again with the same pending purchase (nodes are idempotent per receipt).
    pub async fn complete(&self, pending: &PendingPurchase) -> Result<Purchase, ClientError> {
        self.complete_with(pending, &mut |_| {}).await
    }

    /// [`Client::complete`], telling `progress` what each node does as it happens.
    pub async fn complete_with<F: FnMut(NodeEvent) + ?Sized>(
        &self,
        pending: &PendingPurchase,
        progress: &mut F,
    ) -> Result<Purchase, ClientError> {
        let t = usize::from(self.manifest.threshold);
        let (keyset, factors) = self.unblinding(pending)?;
        let request = IssueRequest {
            receipt: pending.receipt.clone(),
            blinded: pending.blinded.clone(),
        };

        let mut inflight: FuturesUnordered<_> = self
            .manifest
            .nodes
            .iter()
            .map(|node| self.ask_node(node, &request))
            .collect();
        progress(NodeEvent::Asked {
            nodes: self.manifest.nodes.iter().map(|n| n.index.get()).collect(),
        });
        let mut good: Vec<Answer> = Vec::new();
        let mut failures = Vec::new();
        let mut blamed = Vec::new();

        while let Some((node, outcome)) = inflight.next().await {
            match outcome {
                Ok((response, partials)) => {
                    progress(NodeEvent::Answered {
                        node: node.index.get(),
                    });
                    good.push((node.index, response, partials));
                }
                Err(reason) => {
                    let failure = NodeFailure {
                        node: node.index.get(),
                        url: node.url.clone(),
                        reason,
                    };
                    progress(NodeEvent::Failed(failure.clone()));
                    failures.push(failure);
                }
            }
            if good.len() < t {
                continue;
            }
            match combine_all(t, keyset, pending, &factors, &good) {
                Ok(tickets) => {
                    return Ok(Purchase {
                        tickets,
                        blamed,
                        failures,
                    });
                }
                Err(()) => {
                    // Optimism failed: check each partial of the nodes used, drop the bad ones.
                    let bad;
                    (bad, good) = Self::split_bad(keyset, pending, good);
                    for (node, response, _) in bad {
                        tracing::warn!(node = node.get(), "node signed wrong partials; blamed");
                        let failure = NodeFailure {
                            node: node.get(),
                            url: self.node_url(node),
                            reason: "signed wrong partials (blamed)".into(),
                        };
                        progress(NodeEvent::Failed(failure.clone()));
                        failures.push(failure);
                        blamed.push(Blame {
                            node,
                            response,
                            blinded: pending.blinded.clone(),
                        });
                    }
                }
            }
        }
        failures.sort_by_key(|f| f.node);
        Err(ClientError::NotEnoughNodes {
            needed: t,
            good: good.len(),
            failures,
            pending: Box::new(pending.clone()),
        })
    }

    /// What unblinding `pending` needs: its keyset (from the manifest) and its stored factors.
    fn unblinding(
        &self,
        pending: &PendingPurchase,
    ) -> Result<(&KeysetInfo, Vec<BlindingFactor>), ClientError> {
        let keyset = self
            .manifest
            .keyset(&pending.receipt.receipt.keyset_id)
            .ok_or_else(|| ClientError::BadReceipt("keyset not in the manifest".into()))?;
        let factors = pending
            .factors
            .iter()
            .map(|f| BlindingFactor::from_bytes(&f.0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::BadReceipt(format!("stored blinding factor: {e}")))?;
        Ok((keyset, factors))
    }

    /// The answers whose partials do not all verify against their node's key share (or whose
    /// node has none), apart from the others: `(bad, kept)`.
    fn split_bad(
        keyset: &KeysetInfo,
        pending: &PendingPurchase,
        good: Vec<Answer>,
    ) -> (Vec<Answer>, Vec<Answer>) {
        good.into_iter().partition(|(i, _, p)| {
            let Some(pk) = keyset.public_key_share(*i) else {
                return true;
            };
            p.iter()
                .zip(&pending.blinded)
                .any(|(p, b)| issuance::verify_partial(pk, b, p).is_err())
        })
    }

    fn node_url(&self, index: ShareIndex) -> String {
        self.manifest
            .nodes
            .iter()
            .find(|n| n.index == index)
            .map(|n| n.url.clone())
            .unwrap_or_default()
    }

    async fn ask_node<'a>(
        &self,
        node: &'a NodeInfo,
        request: &IssueRequest,
    ) -> (
        &'a NodeInfo,
        Result<(IssueResponse, Vec<PartialSignature>), String>,
    ) {
        let url = format!("{}/v1/issue", node.url);
        let service = format!("node {}", node.index);
        let outcome = match self
            .http
            .post::<_, IssueResponse>(&service, &url, request, None)
            .await
        {
            Err(ClientError::Refused { body, .. }) => {
                Err(format!("refused: {} ({})", body.detail, body.code))
            }
            // The node is named by the caller; only what happened.
            Err(ClientError::Unreachable { reason, .. } | ClientError::NotTaken { reason, .. }) => {
                Err(format!("unreachable: {reason}"))
            }
            Err(ClientError::Unavailable { reason, .. }) => Err(format!("unavailable: {reason}")),
            Err(e) => Err(e.to_string()),
            Ok(response) => check_response(node, request, response),
        };
        (node, outcome)
    }
}

/// Check a node's answer before using it: signed by its identity key, about this request.
fn check_response(
    node: &NodeInfo,
    request: &IssueRequest,
    response: IssueResponse,
) -> Result<(IssueResponse, Vec<PartialSignature>), String> {
    response
        .verify(&node.identity_key)
        .map_err(|_| "response not signed by the node's identity key".to_owned())?;
    let r = &request.receipt.receipt;
    if response.node != node.index
        || response.receipt_id != r.receipt_id
        || response.keyset_id != r.keyset_id
        || response.digest != r.digest
        || response.partials.len() != request.blinded.len()
    {
        return Err("response is not about this request".into());
    }
    let partials = response
        .partial_signatures()
        .map_err(|e| format!("invalid partial: {e}"))?;
    Ok((response, partials))
}

/// Combine the first t good answers for every ticket; `Err` if any ticket fails to verify.
/// A node's good answer: its index, its response, and the partials it carried.
type Answer = (ShareIndex, IssueResponse, Vec<PartialSignature>);

fn combine_all(
    t: usize,
    keyset: &KeysetInfo,
    pending: &PendingPurchase,
    factors: &[BlindingFactor],
    good: &[Answer],
) -> Result<Vec<Ticket>, ()> {
    let used = good.get(..t).ok_or(())?;
    pending
        .holders
        .iter()
        .zip(factors)
        .enumerate()
        .map(|(j, (holder, factor))| {
            let partials: Vec<PartialSignature> = used
                .iter()
                .map(|(_, _, p)| p.get(j).copied().ok_or(()))
                .collect::<Result<_, _>>()?;
            let blind = issuance::combine(t, &partials).map_err(|_| ())?;
            let ticket = Ticket {
                keyset_id: keyset.id,
                holder: *holder,
                signature: issuance::unblind(&blind, factor),
            };
            ticket.verify(&keyset.public_key).map_err(|_| ())?;
            Ok(ticket)
        })
        .collect()
}
