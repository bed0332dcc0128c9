//! IAM policy documents: parsing (statements, Action/NotAction, Resource/NotResource,
//! Principal, every condition operator and its set qualifiers, policy variables) and
//! evaluation of the parsed policy against a request with context keys. Must never panic.
#![no_main]

use gantry_policy::{evaluate, evaluate_resource_policy, Context, Policy, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = std::str::from_utf8(data) else { return };
    let Ok(policy) = Policy::parse(doc) else { return };
    let mut ctx = Context::new();
    ctx.set("aws:username", "ann")
        .set("aws:SourceIp", "10.0.0.1")
        .set("aws:CurrentTime", "2026-11-29T08:00:00Z")
        .set("aws:SecureTransport", "false")
        .set("aws:PrincipalTag/team", "web");
    ctx.set_many("aws:TagKeys", vec!["team".into(), "env".into()]);
    for (action, resource) in [
        ("ecs:RunTask", "arn:aws:ecs:us-east-1:123456789012:task-definition/web:1"),
        ("s3:GetObject", "*"),
        ("iam:PassRole", "arn:aws:iam::123456789012:role/app/x"),
    ] {
        let req = Request {
            action,
            resource,
            principal: Some("arn:aws:iam::123456789012:user/ann"),
            context: &ctx,
        };
        let _ = evaluate(&[&policy], &req);
        let _ = evaluate_resource_policy(&policy, &req);
    }
});
