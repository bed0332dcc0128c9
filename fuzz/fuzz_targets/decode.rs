//! The protocol layer's decoders driven by the vendored models: a JSON body for an ECS,
//! CloudWatch Logs or Secrets Manager operation (validated against the model where the
//! service checks its input), and a form-encoded Query body for ELBv2, IAM, STS or EC2
//! (flattened lists, `member` naming, maps, nested structures). The first byte picks the
//! service, the first line the operation. Must never panic.
#![no_main]

use gantry_aws::protocol::{resolve, Wire};
use libfuzzer_sys::fuzz_target;

const JSON: &[(&str, &str)] = &[
    ("ecs", "AmazonEC2ContainerServiceV20141113"),
    ("logs", "Logs_20140328"),
    ("secretsmanager", "secretsmanager"),
    ("ssm", "AmazonSSM"),
    ("monitoring", "GraniteServiceVersion20100801"),
];
const QUERY: &[&str] = &["elasticloadbalancing", "iam", "sts", "ec2", "monitoring"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let (op, body) = text.split_once('\n').unwrap_or((&text, ""));
    if pick % 2 == 0 {
        let (service, prefix) = JSON[(pick as usize / 2) % JSON.len()];
        let wire = Wire::Json { version: "1.1".into() };
        let _ = resolve(service, &wire, &format!("{prefix}.{op}"), body.as_bytes(), "");
    } else {
        let service = QUERY[(pick as usize / 2) % QUERY.len()];
        let form = format!("Action={op}&Version=2015-12-01&{body}");
        let _ = resolve(service, &Wire::Query, "", form.as_bytes(), "");
    }
});
