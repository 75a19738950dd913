//! Who may read the agent's `/flows` (pod names and every flow of the node): the request's bearer
//! token must pass a TokenReview, and its user may `get` PolicyAuditReports in the namespace the
//! request filters on, or cluster-wide for every flow (a SubjectAccessReview), as kube-rbac-proxy
//! checks. Answers are remembered briefly so that observers reconnecting or asking again do not
//! cost the API server a review each time.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

/// How long a review's answer is reused for the same token and namespace.
pub const REVIEW_TTL: Duration = Duration::from_secs(10);

/// The permission `/flows` asks for, in the namespace filtered on or cluster-wide.
const VERB: &str = "get";
const GROUP: &str = "palisade.dev";
const RESOURCE: &str = "policyauditreports";

/// Why a request may not read flows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 401: no bearer token, or one the API server does not know.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: the user lacks the permission.
    #[error("{0}")]
    Forbidden(String),
    /// 503: the API server could not be asked; not remembered.
    #[error("{0}")]
    Unavailable(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let code = match self {
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (code, format!("{self}\n")).into_response()
    }
}

/// A bearer token and the namespace asked for (`None`: every flow).
type CacheKey = (String, Option<String>);

/// A review's answer and when it was given.
type Remembered = (Instant, Result<(), Refusal>);

/// Reviews `/flows` requests with the API server, remembering answers for [`REVIEW_TTL`].
pub struct FlowAccess {
    client: Client,
    ttl: Duration,
    answers: Mutex<HashMap<CacheKey, Remembered>>,
}

impl FlowAccess {
    pub fn new(client: Client) -> FlowAccess {
        FlowAccess { client, ttl: REVIEW_TTL, answers: Mutex::new(HashMap::new()) }
    }

    /// Whether the request carrying `authorization` (the header's value) may read the flows of
    /// `namespace`, or all flows when `None`.
    pub async fn check(&self, authorization: Option<&str>, namespace: Option<&str>) -> Result<(), Refusal> {
        let Some(token) =
            authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).filter(|t| !t.is_empty())
        else {
            return Err(Refusal::Unauthenticated(
                "/flows needs a bearer token (Authorization: Bearer <token>); `palisade observe --agent` sends the \
                 kubeconfig's"
                    .into(),
            ));
        };
        let key = (token.to_owned(), namespace.map(str::to_owned));
        if let Some(answer) = self.remembered(&key) {
            return answer;
        }
        let answer = self.review(token, namespace).await;
        if !matches!(answer, Err(Refusal::Unavailable(_))) {
            let mut answers = self.answers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            answers.retain(|_, (at, _)| at.elapsed() < self.ttl);
            answers.insert(key, (Instant::now(), answer.clone()));
        }
        answer
    }

    fn remembered(&self, key: &CacheKey) -> Option<Result<(), Refusal>> {
        let answers = self.answers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        answers.get(key).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, answer)| answer.clone())
    }

    async fn review(&self, token: &str, namespace: Option<&str>) -> Result<(), Refusal> {
        let user = self.authenticate(token).await?;
        let name = user.username.clone().unwrap_or_default();
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(VERB.into()),
                    group: Some(GROUP.into()),
                    resource: Some(RESOURCE.into()),
                    namespace: namespace.map(str::to_owned),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let reviewed = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                Refusal::Unavailable(format!("could not review the user's access (SubjectAccessReview): {e}"))
            })?;
        if reviewed.status.is_some_and(|s| s.allowed) {
            return Ok(());
        }
        Err(Refusal::Forbidden(match namespace {
            Some(namespace) => {
                format!(
                    "user {name:?} may not {VERB} {RESOURCE}.{GROUP} in namespace {namespace:?}, which its flows need"
                )
            }
            None => format!(
                "user {name:?} may not {VERB} {RESOURCE}.{GROUP} cluster-wide, which all flows need; ask for one \
                 namespace's (?namespace=NS, `palisade observe -n NS`)"
            ),
        }))
    }

    async fn authenticate(&self, token: &str) -> Result<UserInfo, Refusal> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), ..TokenReviewSpec::default() },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(format!("could not review the bearer token (TokenReview): {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        match status.user {
            Some(user) if status.authenticated == Some(true) => Ok(user),
            _ => Err(Refusal::Unauthenticated(format!(
                "the bearer token did not authenticate: {}",
                status.error.unwrap_or_else(|| "the API server does not know it".into())
            ))),
        }
    }
}

impl std::fmt::Debug for FlowAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowAccess").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}
