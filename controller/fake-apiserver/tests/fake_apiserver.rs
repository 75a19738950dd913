//! The fake behaves like the API server where its callers depend on it, seen through kube-rs.
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Error};
use palisade_fake_apiserver::collections::{PODS, TOKEN_REVIEWS};
use palisade_fake_apiserver::{FakeApi, User};
use serde_json::{Value, json};

fn config_map(name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "data": data})).unwrap()
}

fn code(result: Result<impl Sized, Error>) -> u16 {
    match result {
        Err(Error::Api(status)) => status.code,
        Err(other) => panic!("not an API error: {other}"),
        Ok(_) => 200,
    }
}

#[tokio::test]
async fn a_stale_resource_version_is_a_conflict() {
    let api = FakeApi::default();
    let maps: Api<ConfigMap> = Api::default_namespaced(api.client());
    let created = maps.create(&PostParams::default(), &config_map("a", json!({"k": "1"}))).await.unwrap();
    assert_eq!(code(maps.create(&PostParams::default(), &config_map("a", json!({}))).await), 409, "AlreadyExists");
    let mut changed = created.clone();
    changed.data = Some([("k".to_string(), "2".to_string())].into());
    let replaced = maps.replace("a", &PostParams::default(), &changed).await.unwrap();
    assert!(replaced.metadata.resource_version > created.metadata.resource_version);
    assert_eq!(code(maps.replace("a", &PostParams::default(), &changed).await), 409, "based on a stale version");
    let stale = json!({"metadata": {"resourceVersion": created.metadata.resource_version}, "data": {"k": "3"}});
    assert_eq!(code(maps.patch("a", &PatchParams::default(), &Patch::Merge(&stale)).await), 409);
}

#[tokio::test]
async fn apply_conflicts_with_another_managers_field_unless_forced() {
    let api = FakeApi::default();
    let maps: Api<ConfigMap> = Api::default_namespaced(api.client());
    let body = |value: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": value}});
    maps.patch("a", &PatchParams::apply("first"), &Patch::Apply(body("1"))).await.unwrap();
    assert_eq!(code(maps.patch("a", &PatchParams::apply("second"), &Patch::Apply(body("2"))).await), 409);
    // The same value is no conflict: the field is shared.
    maps.patch("a", &PatchParams::apply("second"), &Patch::Apply(body("1"))).await.unwrap();
    let forced = maps.patch("a", &PatchParams::apply("second").force(), &Patch::Apply(body("2"))).await.unwrap();
    assert_eq!(forced.data.unwrap()["k"], "2");
    // "first" lost the field: a value of its own is a conflict again.
    assert_eq!(code(maps.patch("a", &PatchParams::apply("first"), &Patch::Apply(body("3"))).await), 409);
}

#[tokio::test]
async fn the_status_subresource_and_the_main_resource_write_only_their_part() {
    let api = FakeApi::default();
    api.put(PODS, json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "n1"}}));
    let pods: Api<Pod> = Api::default_namespaced(api.client());
    let both = json!({"spec": {"nodeName": "n2"}, "status": {"podIP": "10.0.0.1"}});
    pods.patch_status("p", &PatchParams::default(), &Patch::Merge(&both)).await.unwrap();
    let pod = api.get(PODS, "default", "p").unwrap();
    assert_eq!((pod["spec"]["nodeName"].as_str(), pod["status"]["podIP"].as_str()), (Some("n1"), Some("10.0.0.1")));
    let both = json!({"spec": {"nodeName": "n3"}, "status": {"podIP": "10.0.0.2"}});
    pods.patch("p", &PatchParams::default(), &Patch::Merge(&both)).await.unwrap();
    let pod = api.get(PODS, "default", "p").unwrap();
    assert_eq!((pod["spec"]["nodeName"].as_str(), pod["status"]["podIP"].as_str()), (Some("n3"), Some("10.0.0.1")));
    assert_eq!(pod["metadata"]["generation"], 2, "one spec change");
}

#[tokio::test]
async fn finalizers_hold_a_deletion_and_owned_objects_go_with_their_owner() {
    let api = FakeApi::default();
    let maps: Api<ConfigMap> = Api::default_namespaced(api.client());
    let mut owner = config_map("owner", json!({}));
    owner.metadata.finalizers = Some(vec!["example.com/cleanup".into()]);
    let owner = maps.create(&PostParams::default(), &owner).await.unwrap();
    let mut owned = config_map("owned", json!({}));
    owned.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({"apiVersion": "v1",
        "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}))
        .unwrap(),
    ]);
    maps.create(&PostParams::default(), &owned).await.unwrap();

    maps.delete("owner", &DeleteParams::default()).await.unwrap();
    let marked = maps.get("owner").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(maps.get_opt("owned").await.unwrap().is_some(), "the owner is not gone yet");
    let release = json!({"metadata": {"finalizers": null}});
    maps.patch("owner", &PatchParams::default(), &Patch::Merge(&release)).await.unwrap();
    let left = maps.list(&ListParams::default()).await.unwrap().items;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_list_with_a_limit_comes_in_pages_in_name_order() {
    let api = FakeApi::default();
    let maps: Api<ConfigMap> = Api::default_namespaced(api.client());
    for name in ["c", "a", "b"] {
        maps.create(&PostParams::default(), &config_map(name, json!({}))).await.unwrap();
    }
    let names = |list: &kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        list.items.iter().map(|m| m.metadata.name.clone().unwrap()).collect()
    };
    let first = maps.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first), ["a", "b"]);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let rest = maps.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(names(&rest), ["c"]);
    assert!(rest.metadata.continue_.is_none(), "the last page");
    assert_eq!(names(&maps.list(&ListParams::default()).await.unwrap()), ["a", "b", "c"]);
}

#[tokio::test]
async fn a_watch_sees_the_changes_after_its_resource_version_then_410_once_expired() {
    let api = FakeApi::default();
    let maps: Api<ConfigMap> = Api::default_namespaced(api.client());
    maps.create(&PostParams::default(), &config_map("before", json!({}))).await.unwrap();
    let version = maps.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    maps.create(&PostParams::default(), &config_map("a", json!({}))).await.unwrap();
    maps.create(&PostParams::default(), &config_map("b", json!({}))).await.unwrap();
    let params = WatchParams::default().labels("!skip"); // bookmarks on by default
    let mut events = maps.watch(&params, &version).await.unwrap().boxed();
    let mut next = async || match events.try_next().await.unwrap().expect("an event") {
        WatchEvent::Added(m) => format!("ADDED {}", m.metadata.name.unwrap()),
        WatchEvent::Modified(m) => format!("MODIFIED {}", m.metadata.name.unwrap()),
        WatchEvent::Deleted(m) => format!("DELETED {}", m.metadata.name.unwrap()),
        WatchEvent::Bookmark(_) => "BOOKMARK".into(),
        WatchEvent::Error(e) => format!("ERROR {}", e.code),
    };
    assert_eq!([next().await, next().await, next().await], ["ADDED a", "ADDED b", "BOOKMARK"]);
    maps.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v"}}))).await.unwrap();
    assert_eq!(next().await, "MODIFIED a");
    // Labelled out of the watch's selector: gone, for this watch.
    maps.patch("b", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"skip": "y"}}})))
        .await
        .unwrap();
    assert_eq!(next().await, "DELETED b");
    maps.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(next().await, "DELETED a");

    api.expire("api/v1/configmaps");
    assert_eq!(next().await, "ERROR 410");
    let mut again = maps.watch(&WatchParams::default(), &version).await.unwrap().boxed();
    assert!(matches!(again.try_next().await.unwrap(), Some(WatchEvent::Error(e)) if e.code == 410));
}

#[tokio::test]
async fn reviews_answer_from_the_tests_tokens_and_authorizer() {
    let api = FakeApi::default();
    let alice = User { username: "alice".into(), groups: vec!["devs".into()], ..User::default() };
    api.add_token("alice-token", alice);
    api.authorize(|access| {
        access.user.groups.contains(&"devs".to_string())
            && (access.verb.as_str(), access.group.as_str(), access.resource.as_str())
                == ("get", "palisade.dev", "policyauditreports")
            && access.namespace.as_deref() == Some("shop")
    });
    let tokens: Api<TokenReview> = Api::all(api.client());
    let review = |token: &str| TokenReview {
        spec: TokenReviewSpec { token: token.into(), ..TokenReviewSpec::default() },
        ..TokenReview::default()
    };
    let known = tokens.create(&PostParams::default(), &review("alice-token")).await.unwrap().status.unwrap();
    let user = known.user.unwrap();
    assert_eq!((known.authenticated, user.username.as_deref()), (Some(true), Some("alice")));
    assert_eq!(user.groups, Some(vec!["devs".to_string()]));
    let unknown = tokens.create(&PostParams::default(), &review("forged")).await.unwrap().status.unwrap();
    assert_eq!(unknown.authenticated, Some(false));

    let access: Api<SubjectAccessReview> = Api::all(api.client());
    let may_get_reports = |namespace: Option<&str>| SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some("alice".into()),
            groups: Some(vec!["devs".into()]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some("get".into()),
                group: Some("palisade.dev".into()),
                resource: Some("policyauditreports".into()),
                namespace: namespace.map(String::from),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let allowed = |review: SubjectAccessReview| review.status.unwrap().allowed;
    assert!(allowed(access.create(&PostParams::default(), &may_get_reports(Some("shop"))).await.unwrap()));
    assert!(!allowed(access.create(&PostParams::default(), &may_get_reports(None)).await.unwrap()), "cluster-wide");

    let whoami = SelfSubjectReview::default();
    let mine = Api::<SelfSubjectReview>::all(api.client_with_token("alice-token"));
    let info = mine.create(&PostParams::default(), &whoami).await.unwrap().status.unwrap().user_info.unwrap();
    assert_eq!(info.username.as_deref(), Some("alice"));
    let anonymous = Api::<SelfSubjectReview>::all(api.client());
    assert_eq!(code(anonymous.create(&PostParams::default(), &whoami).await), 401, "no token, no user");
    assert!(api.list(TOKEN_REVIEWS, "").is_empty(), "reviews are answered, not stored");
}
