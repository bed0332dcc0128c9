use super::*;
use serde_json::json;

const TASK: &str = "arn:aws:ecs:us-east-1:123456789012:task/prod/abc";

fn policy(v: serde_json::Value) -> Policy {
    Policy::parse(&v.to_string()).unwrap()
}

fn decide(policies: &[&Policy], action: &str, resource: &str, ctx: &Context) -> Decision {
    evaluate(
        policies,
        &Request {
            action,
            resource,
            principal: None,
            context: ctx,
        },
    )
}

#[test]
fn deny_wins_then_allow_else_implicit_deny() {
    let allow =
        policy(json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "ecs:*", "Resource": "*"}}));
    let deny = policy(json!({"Statement": [{"Effect": "Deny", "Action": "ecs:StopTask", "Resource": TASK}]}));
    let ctx = Context::new();
    assert_eq!(decide(&[&allow], "ecs:RunTask", TASK, &ctx), Decision::Allow);
    assert_eq!(
        decide(&[&allow, &deny], "ecs:StopTask", TASK, &ctx),
        Decision::ExplicitDeny
    );
    assert_eq!(
        decide(&[&deny, &allow], "ecs:StopTask", TASK, &ctx),
        Decision::ExplicitDeny
    );
    assert_eq!(
        decide(&[&allow], "logs:PutLogEvents", "*", &ctx),
        Decision::ImplicitDeny
    );
    assert_eq!(decide(&[], "ecs:RunTask", TASK, &ctx), Decision::ImplicitDeny);
}

#[test]
fn not_action_and_not_resource() {
    let p = policy(json!({"Statement": [
        {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "ecs:*", "NotResource": "arn:aws:ecs:*:*:task/prod/*"}]}));
    let ctx = Context::new();
    assert_eq!(decide(&[&p], "iam:CreateUser", "*", &ctx), Decision::ImplicitDeny);
    assert_eq!(decide(&[&p], "ecs:StopTask", TASK, &ctx), Decision::Allow);
    let other = "arn:aws:ecs:us-east-1:123456789012:task/dev/abc";
    assert_eq!(decide(&[&p], "ecs:StopTask", other, &ctx), Decision::ExplicitDeny);
}

#[test]
fn conditions_with_missing_keys_follow_aws() {
    let p = |op: &str| {
        policy(json!({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*",
            "Condition": {op: {"aws:ResourceTag/team": "web"}}}}))
    };
    let empty = Context::new();
    let mut web = Context::new();
    web.set("aws:ResourceTag/team", "web");
    let mut db = Context::new();
    db.set("aws:resourcetag/team", "db"); // keys are case-insensitive
    let cases = [
        ("StringEquals", [false, true, false]),
        ("StringNotEquals", [true, false, true]),
        ("StringEqualsIfExists", [true, true, false]),
        ("StringNotEqualsIfExists", [true, false, true]),
        ("StringLike", [false, true, false]),
    ];
    for (op, want) in cases {
        let got: Vec<bool> = [&empty, &web, &db]
            .iter()
            .map(|c| decide(&[&p(op)], "ecs:RunTask", "*", c) == Decision::Allow)
            .collect();
        assert_eq!(got, want, "{op}");
    }
    let null = policy(json!({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*",
        "Condition": {"Null": {"aws:ResourceTag/team": "true"}}}}));
    assert_eq!(decide(&[&null], "a:b", "*", &empty), Decision::Allow);
    assert_eq!(decide(&[&null], "a:b", "*", &web), Decision::ImplicitDeny);
}

#[test]
fn operators() {
    let allow_if = |cond: serde_json::Value| {
        policy(json!({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": cond}}))
    };
    let mut ctx = Context::new();
    ctx.set("aws:SourceIp", "10.1.2.3")
        .set("aws:SecureTransport", "true")
        .set("aws:CurrentTime", "2026-11-28T12:00:00Z")
        .set("ecs:cpu", "512")
        .set("aws:PrincipalArn", "arn:aws:iam::123456789012:role/app")
        .set("aws:username", "ann")
        .set("aws:userid", "app");
    let yes = [
        json!({"IpAddress": {"aws:SourceIp": ["192.168.0.0/16", "10.0.0.0/8"]}}),
        json!({"NotIpAddress": {"aws:SourceIp": "172.16.0.0/12"}}),
        json!({"Bool": {"aws:SecureTransport": "true"}}),
        json!({"Bool": {"aws:SecureTransport": true}}),
        json!({"DateLessThan": {"aws:CurrentTime": "2027-01-01T00:00:00Z"}}),
        json!({"DateGreaterThanEquals": {"aws:CurrentTime": "2026-11-28"}}),
        json!({"NumericLessThanEquals": {"ecs:cpu": "512"}}),
        json!({"NumericGreaterThan": {"ecs:cpu": 256}}),
        json!({"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/*"}}),
        json!({"StringEqualsIgnoreCase": {"aws:username": "ANN"}}),
        json!({"StringLike": {"aws:PrincipalArn": "*:role/${aws:userid}"}}),
    ];
    let no = [
        json!({"IpAddress": {"aws:SourceIp": "10.2.0.0/16"}}),
        json!({"Bool": {"aws:SecureTransport": "false"}}),
        json!({"NumericLessThan": {"ecs:cpu": "512"}}),
        json!({"ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::123456789012:role/*"}}),
        // Two keys in one block, and two blocks: all must hold.
        json!({"Bool": {"aws:SecureTransport": "true"}, "StringEquals": {"aws:username": "bob"}}),
        json!({"StringEquals": {"aws:username": "ann", "ecs:cpu": "1024"}}),
    ];
    for c in yes {
        assert_eq!(
            decide(&[&allow_if(c.clone())], "a:b", "*", &ctx),
            Decision::Allow,
            "{c}"
        );
    }
    for c in no {
        assert_eq!(
            decide(&[&allow_if(c.clone())], "a:b", "*", &ctx),
            Decision::ImplicitDeny,
            "{c}"
        );
    }
}

#[test]
fn set_qualifiers_over_multivalued_keys() {
    let p = |q: &str| {
        policy(json!({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*",
            "Condition": {q: {"aws:TagKeys": ["team", "env"]}}}}))
    };
    let mut some = Context::new();
    some.set_many("aws:TagKeys", vec!["team".into(), "owner".into()]);
    let mut subset = Context::new();
    subset.set_many("aws:TagKeys", vec!["team".into()]);
    let none = Context::new();
    let allowed = |q: &str, c: &Context| decide(&[&p(q)], "a:b", "*", c) == Decision::Allow;
    assert!(allowed("ForAnyValue:StringEquals", &some) && !allowed("ForAnyValue:StringEquals", &none));
    assert!(!allowed("ForAllValues:StringEquals", &some) && allowed("ForAllValues:StringEquals", &subset));
    // ForAllValues over an absent key holds (nothing fails it), as AWS documents.
    assert!(allowed("ForAllValues:StringEquals", &none));
}

#[test]
fn policy_variables_in_resources() {
    let p = policy(
        json!({"Statement": {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
        "Resource": "arn:aws:secretsmanager:*:*:secret:${aws:username}/*"}}),
    );
    let mut ann = Context::new();
    ann.set("aws:username", "ann");
    let mine = "arn:aws:secretsmanager:us-east-1:1:secret:ann/db-AbCdEf";
    let theirs = "arn:aws:secretsmanager:us-east-1:1:secret:bob/db-AbCdEf";
    assert_eq!(
        decide(&[&p], "secretsmanager:GetSecretValue", mine, &ann),
        Decision::Allow
    );
    assert_eq!(
        decide(&[&p], "secretsmanager:GetSecretValue", theirs, &ann),
        Decision::ImplicitDeny
    );
    // Without the variable's value nothing matches.
    assert_eq!(
        decide(&[&p], "secretsmanager:GetSecretValue", mine, &Context::new()),
        Decision::ImplicitDeny
    );
}

#[test]
fn principals_in_trust_policies() {
    let trust = policy(json!({"Statement": {"Effect": "Allow", "Action": "sts:AssumeRole",
        "Principal": {"AWS": ["123456789012", "arn:aws:iam::999999999999:role/ci"]}}}));
    let ctx = Context::new();
    let who = |p: &str| {
        evaluate(
            &[&trust],
            &Request {
                action: "sts:AssumeRole",
                resource: "arn:aws:iam::123456789012:role/app",
                principal: Some(p),
                context: &ctx,
            },
        )
    };
    assert_eq!(who("arn:aws:iam::123456789012:user/ann"), Decision::Allow);
    assert_eq!(who("arn:aws:iam::999999999999:role/ci"), Decision::Allow);
    assert_eq!(who("arn:aws:iam::999999999999:user/eve"), Decision::ImplicitDeny);
}

#[test]
fn malformed_documents_are_refused_in_iam_words() {
    let bad = [
        ("not json", "Syntax errors"),
        ("[]", "JSON object"),
        (r#"{"Version": "2020-01-01", "Statement": []}"#, "Version"),
        (r#"{"Statement": []}"#, "should have a Statement"),
        (
            r#"{"Statement": {"Effect": "Maybe", "Action": "*", "Resource": "*"}}"#,
            "Effect",
        ),
        (
            r#"{"Statement": {"Effect": "Allow", "Resource": "*"}}"#,
            "must contain actions",
        ),
        (
            r#"{"Statement": {"Effect": "Allow", "Action": "*", "NotAction": "x:y", "Resource": "*"}}"#,
            "both Action and NotAction",
        ),
        (
            r#"{"Statement": {"Effect": "Allow", "Action": "runtask", "Resource": "*"}}"#,
            "colon",
        ),
        (
            r#"{"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringSorta": {"k": "v"}}}}"#,
            "Invalid Condition type",
        ),
        (
            r#"{"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"IpAddress": {"aws:SourceIp": "nope"}}}}"#,
            "not a valid value",
        ),
        (
            r#"{"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*", "Extra": 1}}"#,
            "unknown element",
        ),
    ];
    for (doc, why) in bad {
        let e = Policy::parse(doc).unwrap_err();
        assert!(e.0.contains(why), "{doc}: {e}");
    }
    let huge = format!(
        r#"{{"Statement": {{"Effect": "Allow", "Action": "*", "Resource": "{}"}}}}"#,
        "x".repeat(MAX_POLICY_BYTES)
    );
    assert!(Policy::parse(&huge).unwrap_err().0.contains("larger"));
}

#[test]
fn a_resource_policy_naming_only_the_account_hands_the_decision_to_identity_policies() {
    const SECRET: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf";
    let ctx = Context::new();
    let decide = |p: &Policy, who: &str| {
        evaluate_resource_policy(
            p,
            &Request {
                action: "secretsmanager:GetSecretValue",
                resource: SECRET,
                principal: Some(who),
                context: &ctx,
            },
        )
    };
    let grant = |principal: serde_json::Value, effect: &str| {
        policy(json!({"Statement": [{"Effect": effect, "Principal": {"AWS": principal},
                                      "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]}))
    };
    let (ann, bob) = (
        "arn:aws:iam::123456789012:user/ann",
        "arn:aws:iam::123456789012:user/bob",
    );
    let to_ann = grant(json!(ann), "Allow");
    assert_eq!(
        (decide(&to_ann, ann), decide(&to_ann, bob)),
        (Decision::Allow, Decision::ImplicitDeny)
    );
    for account in [json!("123456789012"), json!("arn:aws:iam::123456789012:root")] {
        assert_eq!(
            decide(&grant(account.clone(), "Allow"), ann),
            Decision::ImplicitDeny,
            "{account}"
        );
        assert_eq!(decide(&grant(account, "Deny"), ann), Decision::ExplicitDeny);
    }
    assert_eq!(
        decide(
            &policy(json!({"Statement": [{"Effect": "Allow", "Principal": "*",
        "Action": "secretsmanager:*", "Resource": "*"}]})),
            bob
        ),
        Decision::Allow
    );
}
