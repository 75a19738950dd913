use super::*;
use std::time::{Duration, Instant};

fn parse(text: &str) -> Result<Vec<Node>, YamlError> {
    parse_documents(text, &Limits::default())
}

fn one(text: &str) -> Node {
    let mut docs = parse(text).unwrap();
    assert_eq!(docs.len(), 1, "{text}");
    docs.remove(0)
}

fn at<'n>(node: &'n Node, path: &str) -> &'n Node {
    node.get(&parse_path(path)).unwrap_or_else(|| panic!("no {path}"))
}

const POLICY: &str = "\
# leading comment
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web
  labels:
    app.kubernetes.io/name: web
spec:
  endpointSelector:
    matchLabels: {app: web}
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: client
      toPorts:
        - ports:
            - port: \"80\"
              protocol: TCP
";

#[test]
fn multiple_documents_keep_their_lines_and_skip_empty_ones() {
    let text = "---\n# only a comment\n---\nkind: A\n---\n\nkind: B\nn: 1\n---\n~\n---\n";
    let docs = parse(text).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!((docs[0].line, docs[0].column), (4, 1));
    assert_eq!(at(&docs[1], "kind").value, Value::String("B".into()));
    assert_eq!(at(&docs[1], "kind").line, 7);
    assert_eq!(at(&docs[1], "n").line, 8);
    assert!(parse("").unwrap().is_empty());
    assert!(parse("# nothing\n").unwrap().is_empty());
}

#[test]
fn line_of_follows_nested_paths() {
    let doc = one(POLICY);
    let port = parse_path("spec.ingress[0].toPorts[0].ports[0].port");
    assert_eq!(doc.line_of(&port), 17);
    assert_eq!(doc.get(&port).unwrap().column, 21);
    assert_eq!(doc.line_of(&parse_path("spec.ingress[0]")), 12);
    assert_eq!(doc.line_of(&parse_path("spec.ingress[0].toPorts[0].ports[0].protocol")), 18);
    assert_eq!(doc.line_of(&parse_path("spec.endpointSelector.matchLabels.app")), 10);
    // Missing fields point at the deepest one that exists.
    assert_eq!(doc.line_of(&parse_path("spec.ingress[0].toPorts[3].ports")), 16);
    assert_eq!(doc.line_of(&parse_path("spec.egress")), 9);
    assert_eq!(doc.line_of(&[]), 2);
    assert_eq!(at(&doc, r#"metadata.labels["app.kubernetes.io/name"]"#).line, 7);
}

#[test]
fn paths_parse_keys_indexes_and_quoted_keys() {
    use PathSegment::{Index, Key};
    let key = |s: &str| Key(s.to_owned());
    assert_eq!(parse_path(""), vec![]);
    assert_eq!(parse_path("specs[2]"), vec![key("specs"), Index(2)]);
    assert_eq!(
        parse_path("spec.ingress[0].toPorts[0].ports[0].port"),
        vec![key("spec"), key("ingress"), Index(0), key("toPorts"), Index(0), key("ports"), Index(0), key("port"),]
    );
    assert_eq!(
        parse_path(r#"metadata.labels["app.kubernetes.io/name"]"#),
        vec![key("metadata"), key("labels"), key("app.kubernetes.io/name")]
    );
    assert_eq!(parse_path("a['k8s:io.ns'].b"), vec![key("a"), key("k8s:io.ns"), key("b")]);
    assert_eq!(parse_path(r#"a["say \"hi\"]"]"#), vec![key("a"), key(r#"say "hi"]"#)]);
    assert_eq!(parse_path("io.cilium/app-name"), vec![key("io"), key("cilium/app-name")]);
    assert_eq!(parse_path("[0][1]"), vec![Index(0), Index(1)]);
    assert_eq!(parse_path("a[x]"), vec![key("a"), key("x")]);
}

#[test]
fn scalars_follow_the_yaml_1_2_core_schema() {
    let doc = one(concat!(
        "port: 80\nquoted: \"80\"\nsingle: '80'\nyes: yes\non: off\nt: True\nn1: ~\nn2: null\n",
        "n3:\nhex: 0x1F\noct: 0o17\nleading0: 0777\nneg: -12\nplus: +3\nf: 1.5\nexp: 1e3\n",
        "dot: .5\ninf: -.inf\nnan: .NaN\nbig: 99999999999999999999\nbighex: 0xFFFFFFFFFFFFFFFFF\n",
        "under: 1_000\nneghex: -0x1\nlit: |\n  80\nfold: >-\n  true\n80: key\n",
        "str: !!str 80\nint: !!int \"80\"\nfloat: !!float 1\nbool: !!bool \"false\"\n",
        "ns: ! 12\nverbatim: !<tag:yaml.org,2002:str> 5\n",
    ));
    let value = |path: &str| at(&doc, path).value.clone();
    let s = |s: &str| Value::String(s.to_owned());
    assert_eq!(value("port"), Value::Int(80));
    assert_eq!(value("quoted"), s("80"));
    assert_eq!(value("single"), s("80"));
    assert_eq!(value("yes"), s("yes"));
    assert_eq!(value("on"), s("off"));
    assert_eq!(value("t"), Value::Bool(true));
    assert_eq!([value("n1"), value("n2"), value("n3")], [Value::Null, Value::Null, Value::Null]);
    assert_eq!(value("hex"), Value::Int(31));
    assert_eq!(value("oct"), Value::Int(15));
    assert_eq!(value("leading0"), Value::Int(777));
    assert_eq!(value("neg"), Value::Int(-12));
    assert_eq!(value("plus"), Value::Int(3));
    assert_eq!(value("f"), Value::Float(1.5));
    assert_eq!(value("exp"), Value::Float(1000.0));
    assert_eq!(value("dot"), Value::Float(0.5));
    assert_eq!(value("inf"), Value::Float(f64::NEG_INFINITY));
    assert!(matches!(value("nan"), Value::Float(f) if f.is_nan()));
    assert_eq!(value("big"), s("99999999999999999999"));
    assert_eq!(value("bighex"), s("0xFFFFFFFFFFFFFFFFF"));
    assert_eq!(value("under"), s("1_000"));
    assert_eq!(value("neghex"), s("-0x1"));
    assert_eq!(value("lit"), s("80\n"));
    assert_eq!(value("fold"), s("true"));
    assert_eq!(value("80"), s("key"));
    assert_eq!(value("str"), s("80"));
    assert_eq!(value("int"), Value::Int(80));
    assert_eq!(value("float"), Value::Float(1.0));
    assert_eq!(value("bool"), Value::Bool(false));
    assert_eq!(value("ns"), s("12"));
    assert_eq!(value("verbatim"), s("5"));

    let err = parse("a: !!int abc\n").unwrap_err();
    assert_eq!((err.line, err.message.as_str()), (1, "\"abc\" is not a valid !!int"));
    assert_eq!(parse("a: !foo x\n").unwrap_err().message, "unsupported tag !foo");
    assert_eq!(parse("a: !!binary x\n").unwrap_err().message, "unsupported tag !!binary");
    assert_eq!(parse("a: !!seq {}\n").unwrap_err().message, "unsupported tag !!seq");
    assert!(parse("a: !!map {b: 1}\nc: !!seq [1]\n").is_ok());
}

#[test]
fn empty_values_are_placed_at_their_key() {
    let doc = one("a:\nb: 1\nc:\n\n\n");
    assert_eq!((at(&doc, "a").line, at(&doc, "a").value.clone()), (1, Value::Null));
    assert_eq!(at(&doc, "c").line, 3);
}

#[test]
fn to_json_keeps_order_and_numbers() {
    let doc = one("z: 1\na: [1.5, .inf, .nan, \"x\", ~, true]\nm: {k: v}\n");
    let json = doc.to_json();
    assert_eq!(json.as_object().unwrap().keys().collect::<Vec<_>>(), ["z", "a", "m"]);
    assert_eq!(json, serde_json::json!({"z": 1, "a": [1.5, ".inf", ".nan", "x", null, true], "m": {"k": "v"}}));
}

#[test]
fn billion_laughs_is_refused_fast() {
    let mut text = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for (prev, name) in ('a'..='h').zip('b'..='i') {
        let aliases = vec![format!("*{prev}"); 9].join(",");
        text.push_str(&format!("{name}: &{name} [{aliases}]\n"));
    }
    let start = Instant::now();
    let err = parse(&text).unwrap_err();
    assert!(start.elapsed() < Duration::from_millis(100), "took {:?}", start.elapsed());
    assert!(err.message.starts_with("more than 200000 YAML nodes"), "{err}");
    assert_eq!(err.line, 6);
}

#[test]
fn deep_nesting_is_refused_without_recursion() {
    let start = Instant::now();
    for (open, close) in [("[", "]"), ("{a: ", "}"), ("- ", "")] {
        // Within yaml-rust2's own flow limit (255), so our depth check speaks.
        let text = format!("{}1{}", open.repeat(100), close.repeat(100));
        let err = parse(&text).unwrap_err();
        assert_eq!(err.message, "nested deeper than 64 levels", "{open}");
        assert_eq!((err.line, err.column), (1, 1 + 64 * open.len() as u32));

        let deep = open.repeat(100_000);
        assert!(parse(&deep).is_err(), "{open}");
    }
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    let ok = format!("{}1{}", "[".repeat(64), "]".repeat(64));
    assert!(parse(&ok).is_ok());
}

#[test]
fn duplicate_keys_are_refused_with_their_line() {
    let err = parse("a: 1\nb:\n  c: 1\n  c: 2\n").unwrap_err();
    assert_eq!(err.to_string(), "4:3: duplicate key \"c\" (first on line 3)");
    // Keys compare by their text: `80` and `"80"` are the same key.
    assert_eq!(parse("{80: a, \"80\": b}").unwrap_err().line, 1);
    // Merge keys are plain keys.
    assert!(parse("<<: {a: 1}\nb: 2\n").is_ok());
}

#[test]
fn complex_keys_are_refused() {
    assert_eq!(parse("? [a]\n: 1\n").unwrap_err().message, COMPLEX_KEY);
    assert_eq!(parse("{a: 1}: 1\n").unwrap_err().message, COMPLEX_KEY);
    assert_eq!(parse("x: &m {a: 1}\ny: {*m : 1}\n").unwrap_err().message, COMPLEX_KEY);
    // An alias to a scalar is a scalar key.
    let doc = one("x: &k name\ny: {*k : 1}\n");
    assert_eq!(at(&doc, "y.name").value, Value::Int(1));
}

#[test]
fn input_over_max_bytes_is_refused() {
    let limits = Limits { max_bytes: 10, ..Limits::default() };
    let err = parse_documents("a: 12345678\n", &limits).unwrap_err();
    assert_eq!(err.to_string(), "1:1: input is 12 bytes, more than the limit of 10");
    assert!(parse_documents("a: 1234\n", &limits).is_ok());
}

#[test]
fn too_many_documents_are_refused() {
    let limits = Limits { max_documents: 2, ..Limits::default() };
    let err = parse_documents("a: 1\n---\nb: 1\n---\nc: 1\n", &limits).unwrap_err();
    assert_eq!((err.line, err.message.as_str()), (4, "more than 2 documents"));
}

#[test]
fn aliases_within_limits_expand() {
    let text = "\
ports: &web
  - port: 80
  - port: 443
a:
  toPorts: *web
b: *web
name: &n x
same: *n
";
    let doc = one(text);
    let web = at(&doc, "ports").value.clone();
    assert_eq!(at(&doc, "a.toPorts").value, web);
    assert_eq!(at(&doc, "b").value, web);
    assert_eq!(at(&doc, "same").value, Value::String("x".into()));
    // The copy sits at the alias; its insides keep the anchor's lines.
    assert_eq!(at(&doc, "a.toPorts").line, 5);
    assert_eq!(at(&doc, "a.toPorts[1].port").line, 3);

    // Root 1, keys 4, a 1 + its anchor's copy 1, b 1, c 2 + its anchor's copy 2, d 2: 14.
    let text = "a: &x 1\nb: *x\nc: &y [2]\nd: *y\n";
    let limits = |max_nodes| Limits { max_nodes, ..Limits::default() };
    assert!(parse_documents(text, &limits(14)).is_ok());
    let err = parse_documents(text, &limits(13)).unwrap_err();
    assert_eq!((err.line, err.column), (4, 4));
    // An alias that would land its copy too deep is refused too.
    let text = "a: &x [[1]]\nb: [[*x]]\n";
    let limits = Limits { max_depth: 4, ..Limits::default() };
    assert_eq!(parse_documents(text, &limits).unwrap_err().message, "alias expands deeper than 4 levels");
}

#[test]
fn aliases_cannot_reach_open_anchors_or_other_documents() {
    let msg = "alias to an anchor that is not complete in this document";
    assert_eq!(parse("a: &x [1, *x]\n").unwrap_err().message, msg);
    let err = parse("a: &x 1\n---\nb: *x\n").unwrap_err();
    assert_eq!((err.line, err.message.as_str()), (3, msg));
    assert_eq!(parse("a: *nope\n").unwrap_err().line, 1);
}

#[test]
fn invalid_yaml_reports_line_and_column() {
    let err = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
    assert_eq!((err.line, err.column), (3, 2), "{err}");
    let err = parse("a: 1\n  b: 2\n").unwrap_err();
    assert_eq!((err.line, err.column), (2, 4), "{err}");
    assert!(err.message.contains("mapping values are not allowed"), "{err}");
}

#[test]
fn rendered_yaml_reads_back_as_the_same_value() {
    let value = serde_json::json!({
        "spec": {"ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}], "empty": {}, "none": []},
        "tricky": ["yes", "on", "null", "~", "", " lead", "trail ", "a: b", "a #c", "end:", "k8s:app", "-x", "- x",
            "0x1F", "1e3", ".inf", "1_000", "12:30", "it's", "say \"hi\"", "back\\slash", "tab\there", "line\nbreak",
            "#comment", "&anchor", "*alias", "!tag", "%dir", "@at", "`tick", "[flow]", "{map}", "x,y", "ünïcödé"],
        "nested": [[1, 2], [], [{"a": null, "b": true, "c": 1.5}]],
        "self.branch != '' ? 1 : 2": -7,
    });
    let text = to_yaml(&value);
    let docs = parse_documents(&text, &Limits::default()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(docs[0].to_json(), value, "{text}");
    assert!(
        text.starts_with(
            "spec:\n  ingress:\n  - toPorts:\n    - ports:\n      - port: \"80\"\n        protocol: TCP\n"
        ),
        "{text}"
    );
}

proptest::proptest! {
    #[test]
    fn any_string_survives_rendering(strings in proptest::collection::vec("[a-zA-Z0-9 :#'\"\\!&*%@`{}\\[\\],|>.~_/\t-]{0,12}", 1..6)) {
        let value = serde_json::json!({"items": strings, "key": strings[0], "map": {(strings[0].clone()): 1}});
        let text = to_yaml(&value);
        let docs = parse_documents(&text, &Limits::default()).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}\n{text}")))?;
        proptest::prop_assert_eq!(docs[0].to_json(), value);
    }
}
