//! `/flows` through the agent's router, reviewed by the fake API server: a bearer token that
//! authenticates, and a user who may get PolicyAuditReports where the flows asked for are.
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use palisade_agent::flow_access::FlowAccess;
use palisade_agent::observe::{FlowHub, ObserveLine, authorized_router};
use palisade_fake_apiserver::collections::{SUBJECT_ACCESS_REVIEWS, TOKEN_REVIEWS};
use palisade_fake_apiserver::{FakeApi, User};

#[path = "common/flows.rs"]
mod flows;
use flows::flow;
use tower::ServiceExt;

/// The fake API: `alice-token` is alice, who may get reports in shop; `admin-token` is a
/// cluster-wide reader.
fn cluster() -> FakeApi {
    let api = FakeApi::default();
    api.add_token("alice-token", User::named("alice"));
    api.add_token("admin-token", User { groups: vec!["auditors".into()], ..User::named("admin") });
    api.authorize(|access| {
        let reads_reports = (access.verb.as_str(), access.group.as_str(), access.resource.as_str())
            == ("get", "palisade.dev", "policyauditreports");
        let alice_in_shop = access.user.username == "alice" && access.namespace.as_deref() == Some("shop");
        reads_reports && (alice_in_shop || access.user.groups.contains(&"auditors".to_string()))
    });
    api
}

/// `GET /flows?<query>&last=10&follow=false` with `token`: the status and the body.
async fn get(router: &axum::Router, token: Option<&str>, query: &str) -> (StatusCode, String) {
    let mut request = Request::get(format!("/flows?{query}last=10&follow=false"));
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The namespaces of the flows in an NDJSON body.
fn namespaces(body: &str) -> Vec<String> {
    body.lines()
        .map(|line| match serde_json::from_str::<ObserveLine>(line).unwrap() {
            ObserveLine::Flow(flow) => flow.destination.namespace.unwrap_or_default(),
            ObserveLine::Lost { .. } => panic!("no flow lost"),
        })
        .collect()
}

#[tokio::test]
async fn flows_are_served_to_users_who_may_read_the_reports_of_their_namespace() {
    let api = cluster();
    let hub = FlowHub::default();
    hub.publish(flow("shop"));
    hub.publish(flow("bank"));
    let router = authorized_router(hub, Arc::new(FlowAccess::new(api.client())));

    let (status, body) = get(&router, None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("bearer token"), "{body}");
    let (status, body) = get(&router, Some("forged"), "namespace=shop&").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("did not authenticate"), "{body}");

    let (status, body) = get(&router, Some("alice-token"), "namespace=shop&").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(namespaces(&body), ["shop"], "shop's flows only");
    let (status, body) = get(&router, Some("alice-token"), "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains(r#"user "alice" may not get policyauditreports.palisade.dev cluster-wide"#), "{body}");
    let (status, body) = get(&router, Some("alice-token"), "namespace=bank&").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains(r#"in namespace "bank""#), "{body}");

    let (status, body) = get(&router, Some("admin-token"), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(namespaces(&body), ["shop", "bank"], "a cluster-wide reader gets every flow");
}

#[tokio::test]
async fn answers_are_remembered_per_token_and_namespace() {
    let api = cluster();
    let router = authorized_router(FlowHub::default(), Arc::new(FlowAccess::new(api.client())));
    let reviews =
        |collection: &str| api.requests().iter().filter(|r| r.path.trim_start_matches('/') == collection).count();
    for _ in 0..3 {
        assert_eq!(get(&router, Some("alice-token"), "namespace=shop&").await.0, StatusCode::OK);
        assert_eq!(get(&router, Some("alice-token"), "").await.0, StatusCode::FORBIDDEN);
    }
    assert_eq!((reviews(TOKEN_REVIEWS), reviews(SUBJECT_ACCESS_REVIEWS)), (2, 2), "one review per token and namespace");
}
