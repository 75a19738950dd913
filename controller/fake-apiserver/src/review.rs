//! Authentication and authorization reviews, answered from what a test configures: the user each
//! bearer token stands for ([`crate::FakeApi::add_token`]: TokenReview, and SelfSubjectReview for
//! the request's own token) and an authorizer ([`crate::FakeApi::authorize`]:
//! SubjectAccessReview). Reviews are answered, never stored, as the real API server does.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::collections::{SELF_SUBJECT_REVIEWS, SUBJECT_ACCESS_REVIEWS, TOKEN_REVIEWS};
use crate::store::Refusal;

/// Who a token authenticates as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    pub username: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// A user by name, in no group.
    pub fn named(username: &str) -> User {
        User { username: username.into(), ..User::default() }
    }

    fn to_json(&self) -> Value {
        json!({"username": self.username, "groups": self.groups, "extra": self.extra})
    }

    fn from_json(spec: &Value) -> User {
        let strings = |value: &Value| -> Vec<String> {
            value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect()
        };
        User {
            username: spec["user"].as_str().unwrap_or_default().into(),
            groups: strings(&spec["groups"]),
            extra: spec["extra"].as_object().into_iter().flatten().map(|(k, v)| (k.clone(), strings(v))).collect(),
        }
    }
}

/// What a SubjectAccessReview asks: may `user` `verb` `resource` (of API `group`, `""` for core)
/// in `namespace` (None: cluster-wide)?
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub user: User,
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub namespace: Option<String>,
}

pub(crate) type Authorizer = Arc<dyn Fn(&Access) -> bool + Send + Sync>;

#[derive(Default)]
pub(crate) struct Reviews {
    pub(crate) tokens: HashMap<String, User>,
    /// Without one, every access is denied.
    pub(crate) authorizer: Option<Authorizer>,
}

impl Reviews {
    /// The answer to a create in `collection`, if it is a review; `token` is the request's bearer
    /// token.
    pub(crate) fn answer(&self, collection: &str, body: &Value, token: Option<&str>) -> Option<Result<Value, Refusal>> {
        let review = |status: Value| {
            let mut answer = body.clone();
            answer["status"] = status;
            answer
        };
        Some(match collection {
            TOKEN_REVIEWS => Ok(review(match self.tokens.get(body["spec"]["token"].as_str().unwrap_or_default()) {
                Some(user) => json!({"authenticated": true, "user": user.to_json()}),
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            })),
            SUBJECT_ACCESS_REVIEWS => {
                let spec = &body["spec"];
                let attributes = &spec["resourceAttributes"];
                let text = |field: &str| attributes[field].as_str().unwrap_or_default().to_string();
                let access = Access {
                    user: User::from_json(spec),
                    verb: text("verb"),
                    group: text("group"),
                    resource: text("resource"),
                    namespace: Some(text("namespace")).filter(|n| !n.is_empty()),
                };
                let allowed = self.authorizer.as_ref().is_some_and(|decide| decide(&access));
                let reason = if allowed { "allowed by the test's authorizer" } else { "no rule allows it" };
                Ok(review(json!({"allowed": allowed, "reason": reason})))
            }
            SELF_SUBJECT_REVIEWS => match token.and_then(|t| self.tokens.get(t)) {
                Some(user) => Ok(review(json!({"userInfo": user.to_json()}))),
                None => Err(Refusal::new(401, "Unauthorized", "Unauthorized")),
            },
            _ => return None,
        })
    }
}
