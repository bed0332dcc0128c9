//! `gantry debug bench-policy`: what IAM policy evaluation adds to a request. A principal with
//! N attached policies (each a few statements with wildcards, NotResource and conditions, as
//! users write them) is evaluated for a realistic request, many times, alone and through
//! `iam::authorize` (the stored documents, as a request meets them); the baseline is the
//! SigV4 verification every request already pays, measured in the same run. Reports the
//! median and p99 of each, and their ratio.

use gantry_aws::sigv4::{self, KeyLookup, SecretKey, SignedRequest};
use gantry_policy::{evaluate, Context, Decision, Policy, Request};
use std::time::Instant;

#[derive(clap::Args)]
pub struct BenchPolicyArgs {
    /// Policies attached to the principal.
    #[arg(long, default_value_t = 20)]
    policies: usize,
    /// Requests evaluated (each timed).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
}

/// The i-th policy: mostly statements that do not apply to the request (the common case),
/// with the wildcards and conditions that make matching work.
fn policy(i: usize) -> Policy {
    Policy::parse(&document(i)).expect("the bench's policies parse")
}

fn document(i: usize) -> String {
    let doc = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Read", "Effect": "Allow", "Action": ["ecs:Describe*", "ecs:List*", "logs:Get*"],
         "Resource": format!("arn:aws:ecs:*:123456789012:cluster/team-{i}*")},
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
         "Resource": format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:team-{i}/*"),
         "Condition": {"StringEquals": {"aws:ResourceTag/team": format!("team-{i}")}}},
        {"Effect": "Deny", "Action": "ecs:Delete*", "NotResource": format!("arn:aws:ecs:*:*:service/sandbox-{i}/*")},
        {"Effect": "Allow", "Action": ["ecs:RunTask", "ecs:StartTask"], "Resource": "*",
         "Condition": {"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "192.168.0.0/16"]},
                       "Bool": {"aws:SecureTransport": "true"},
                       "StringLike": {"ecs:cluster": format!("arn:aws:ecs:*:*:cluster/team-{i}")}}}
    ]});
    doc.to_string()
}

struct OneKey(SecretKey);

impl KeyLookup for OneKey {
    fn lookup(&self, _: &str) -> Option<SecretKey> {
        Some(self.0.clone())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn run(a: BenchPolicyArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(
        a.policies > 0 && a.requests > 0,
        "--policies and --requests must be positive"
    );
    let policies: Vec<Policy> = (0..a.policies).map(policy).collect();
    let refs: Vec<&Policy> = policies.iter().collect();
    let mut ctx = Context::new();
    ctx.set("aws:SourceIp", "10.1.2.3")
        .set("aws:SecureTransport", "true")
        .set("aws:PrincipalArn", "arn:aws:iam::123456789012:user/ann")
        .set(
            "ecs:cluster",
            format!("arn:aws:ecs:us-east-1:123456789012:cluster/team-{}", a.policies - 1),
        );
    let req = Request {
        action: "ecs:RunTask",
        resource: "arn:aws:ecs:us-east-1:123456789012:task-definition/web:3",
        principal: None,
        context: &ctx,
    };
    anyhow::ensure!(
        evaluate(&refs, &req) == Decision::Allow,
        "the bench's request should be allowed"
    );

    // The baseline: one signed ECS request, verified as the front verifies every request.
    let body = br#"{"cluster":"team-1","taskDefinition":"web:3","count":1}"#;
    let now = chrono::Utc::now();
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let headers = vec![
        ("content-type".to_string(), "application/x-amz-json-1.1".to_string()),
        ("host".to_string(), "127.0.0.1:4566".to_string()),
        ("x-amz-date".to_string(), amz_date.clone()),
        (
            "x-amz-target".to_string(),
            "AmazonEC2ContainerServiceV20141113.RunTask".to_string(),
        ),
    ];
    let signed: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
    let unsigned = SignedRequest {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
        body,
    };
    let sig = sigv4::signature("secret", &unsigned, &signed, &amz_date, "us-east-1", "ecs");
    let mut with_auth = headers.clone();
    with_auth.push((
        "authorization".to_string(),
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDBENCH/{}/us-east-1/ecs/aws4_request, SignedHeaders={}, Signature={sig}",
            &amz_date[..8],
            signed.join(";")
        ),
    ));
    let request = SignedRequest {
        headers: &with_auth,
        ..unsigned
    };
    let key = OneKey(SecretKey {
        secret: "secret".into(),
        session_token: None,
        account_id: "123456789012".into(),
    });
    anyhow::ensure!(
        sigv4::verify(&request, &key, now).is_ok(),
        "the bench's request should verify"
    );

    // The path a request takes: the caller's stored documents through the parse cache.
    let caller = gantry_control::iam::Caller::User {
        account: "123456789012".into(),
        user: gantry_control::iam::User {
            name: "ann".into(),
            path: "/".into(),
            id: "AIDABENCH".into(),
            arn: "arn:aws:iam::123456789012:user/ann".into(),
            created: 0.0,
            tags: vec![],
            policies: (0..a.policies).map(|i| (format!("p{i}"), document(i))).collect(),
            managed: Default::default(),
            groups: vec![],
            group_documents: vec![],
        },
    };
    anyhow::ensure!(
        gantry_control::iam::authorize(&caller, req.action, req.resource, &ctx).is_ok(),
        "the caller should be allowed"
    );
    let (mut policy_us, mut sigv4_us) = (Vec::with_capacity(a.requests), Vec::with_capacity(a.requests));
    let mut authorize_us = Vec::with_capacity(a.requests);
    for _ in 0..a.requests {
        let t = Instant::now();
        std::hint::black_box(evaluate(&refs, &req));
        policy_us.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        std::hint::black_box(gantry_control::iam::authorize(&caller, req.action, req.resource, &ctx).is_ok());
        authorize_us.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        std::hint::black_box(sigv4::verify(&request, &key, now).is_ok());
        sigv4_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    policy_us.sort_by(f64::total_cmp);
    sigv4_us.sort_by(f64::total_cmp);
    authorize_us.sort_by(f64::total_cmp);
    let (a50, a99) = (percentile(&authorize_us, 0.5), percentile(&authorize_us, 0.99));
    let (p50, p99) = (percentile(&policy_us, 0.5), percentile(&policy_us, 0.99));
    let (b50, b99) = (percentile(&sigv4_us, 0.5), percentile(&sigv4_us, 0.99));
    println!(
        "policy evaluation, {} policies x 4 statements, {} requests:",
        a.policies, a.requests
    );
    println!("  evaluate      median {p50:8.2} us   p99 {p99:8.2} us");
    println!("  authorize     median {a50:8.2} us   p99 {a99:8.2} us   (stored documents, parse cache)");
    println!("  sigv4 verify  median {b50:8.2} us   p99 {b99:8.2} us   (baseline, every request)");
    println!("  ratio         median {:8.2}x     p99 {:8.2}x", p50 / b50, p99 / b99);
    Ok(0)
}
