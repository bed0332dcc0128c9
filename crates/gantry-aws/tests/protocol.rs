//! The model-driven Query codec against the vendored ELBv2 model: what botocore's serializer
//! sends decodes to the input shape, constraints are reported in AWS's words, and outputs
//! encode as botocore's parser expects.

use gantry_aws::protocol::{form_params, query, services, Wire};
use serde_json::json;
use std::collections::BTreeMap;

fn elbv2() -> &'static gantry_aws::protocol::model::Model {
    &services()
        .iter()
        .find(|s| s.model.metadata.endpoint_prefix == "elasticloadbalancing")
        .expect("elbv2 is served")
        .model
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn decode(action: &str, pairs: &[(&str, &str)]) -> Result<serde_json::Value, String> {
    let m = elbv2();
    query::decode(m, &m.operations[action], &params(pairs)).map_err(|p| p.message())
}

#[test]
fn nested_structures_lists_and_scalars_decode_to_the_input_shape() {
    let v = decode(
        "CreateRule",
        &[
            ("Action", "CreateRule"),
            ("Version", "2015-12-01"),
            ("ListenerArn", "arn:l"),
            ("Priority", "10"),
            ("Conditions.member.1.Field", "path-pattern"),
            ("Conditions.member.1.PathPatternConfig.Values.member.1", "/api/*"),
            ("Conditions.member.1.PathPatternConfig.Values.member.2", "/v2/*"),
            ("Actions.member.1.Type", "forward"),
            (
                "Actions.member.1.ForwardConfig.TargetGroups.member.1.TargetGroupArn",
                "arn:tg",
            ),
            ("Actions.member.1.ForwardConfig.TargetGroups.member.1.Weight", "80"),
            (
                "Actions.member.1.ForwardConfig.TargetGroupStickinessConfig.Enabled",
                "true",
            ),
        ],
    )
    .unwrap();
    assert_eq!(
        v,
        json!({
            "ListenerArn": "arn:l", "Priority": 10,
            "Conditions": [{"Field": "path-pattern", "PathPatternConfig": {"Values": ["/api/*", "/v2/*"]}}],
            "Actions": [{"Type": "forward", "ForwardConfig": {
                "TargetGroups": [{"TargetGroupArn": "arn:tg", "Weight": 80}],
                "TargetGroupStickinessConfig": {"Enabled": true}}}]
        })
    );
}

#[test]
fn list_elements_are_ordered_by_index_and_an_empty_list_is_a_bare_name() {
    let v = decode(
        "DescribeLoadBalancers",
        &[
            ("Names.member.2", "b"),
            ("Names.member.10", "c"),
            ("Names.member.1", "a"),
        ],
    )
    .unwrap();
    assert_eq!(v, json!({"Names": ["a", "b", "c"]}));
    let v = decode("DescribeLoadBalancers", &[("Names", "")]).unwrap();
    assert_eq!(v, json!({"Names": []}));
}

#[test]
fn violations_are_collected_in_aws_words() {
    let e = decode("CreateTargetGroup", &[("Port", "70000"), ("Protocol", "GOPHER")]).unwrap_err();
    assert!(e.starts_with("3 validation errors detected: "), "{e}");
    assert!(
        e.contains("Value null at 'name' failed to satisfy constraint: Member must not be null"),
        "{e}"
    );
    assert!(
        e.contains(
            "Value '70000' at 'port' failed to satisfy constraint: Member must have value less than or equal to 65535"
        ),
        "{e}"
    );
    assert!(e.contains("Value 'GOPHER' at 'protocol' failed to satisfy constraint: Member must satisfy enum value set: [HTTP, HTTPS,"), "{e}");
}

#[test]
fn malformed_numbers_booleans_and_unknown_parameters_are_refused() {
    let e = decode("CreateTargetGroup", &[("Name", "a"), ("Port", "eighty")]).unwrap_err();
    assert!(
        e.contains("Value 'eighty' at 'port' failed to satisfy constraint: Member must be an integer"),
        "{e}"
    );
    let e = decode("CreateTargetGroup", &[("Name", "a"), ("HealthCheckEnabled", "yes")]).unwrap_err();
    assert!(e.contains("Member must be true or false"), "{e}");
    let e = decode("CreateTargetGroup", &[("Name", "a"), ("Colour", "blue")]).unwrap_err();
    assert!(e.contains("Parameter 'Colour' is not recognized"), "{e}");
    let e = decode("DescribeLoadBalancers", &[("PageSize", "401")]).unwrap_err();
    assert!(
        e.contains(
            "Value '401' at 'pageSize' failed to satisfy constraint: Member must have value less than or equal to 400"
        ),
        "{e}"
    );
    let attrs: Vec<(String, String)> = (1..=21)
        .map(|i| (format!("Attributes.member.{i}.Key"), format!("k{i}")))
        .collect();
    let mut refs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    refs.push(("LoadBalancerArn", "arn:lb"));
    let e = decode("ModifyLoadBalancerAttributes", &refs).unwrap_err();
    assert!(
        e.contains("at 'attributes' failed to satisfy constraint: Member must have length less than or equal to 20"),
        "{e}"
    );
}

#[test]
fn oversized_lists_are_refused_without_decoding_them() {
    let many: Vec<(String, String)> = (1..=1001).map(|i| (format!("Names.member.{i}"), "n".into())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let e = decode("DescribeLoadBalancers", &refs).unwrap_err();
    assert!(e.contains("Member must have length less than or equal to 1000"), "{e}");
}

#[test]
fn form_parameters_given_twice_are_refused() {
    assert!(form_params(b"Action=A&Names.member.1=x", "").is_ok());
    let e = form_params(b"Action=A&Action=B", "").unwrap_err();
    assert_eq!(e.kind, "MalformedQueryString");
    let both = form_params(b"Names.member.1=a%20b", "Action=DescribeLoadBalancers").unwrap();
    assert_eq!(both["Names.member.1"], "a b");
}

#[test]
fn outputs_encode_with_result_wrapper_members_and_iso_times() {
    let m = elbv2();
    let out = json!({"LoadBalancers": [{"LoadBalancerName": "web & co", "CreatedTime": 1_700_000_000.5,
        "State": {"Code": "active"}, "SecurityGroups": ["sg-1", "sg-2"]}]});
    let xml = query::encode(m, &m.operations["DescribeLoadBalancers"], &out, "req-1");
    assert!(xml.contains("<DescribeLoadBalancersResponse xmlns=\"http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/\"><DescribeLoadBalancersResult><LoadBalancers><member>"), "{xml}");
    assert!(
        xml.contains("<LoadBalancerName>web &amp; co</LoadBalancerName>"),
        "{xml}"
    );
    assert!(
        xml.contains("<CreatedTime>2023-11-14T22:13:20.500Z</CreatedTime>"),
        "{xml}"
    );
    assert!(
        xml.contains("<SecurityGroups><member>sg-1</member><member>sg-2</member></SecurityGroups>"),
        "{xml}"
    );
    assert!(
        xml.ends_with(
            "<ResponseMetadata><RequestId>req-1</RequestId></ResponseMetadata></DescribeLoadBalancersResponse>"
        ),
        "{xml}"
    );
}

#[test]
fn errors_use_the_models_codes_and_the_query_envelope() {
    let m = elbv2();
    assert_eq!(
        m.error_code("LoadBalancerNotFoundException"),
        Some(("LoadBalancerNotFound".into(), Some(400)))
    );
    let xml = query::encode_error(
        m.metadata.xml_namespace.as_deref(),
        "LoadBalancerNotFound",
        "gone <now>",
        true,
        "r",
    );
    assert!(xml.contains("<Error><Type>Sender</Type><Code>LoadBalancerNotFound</Code><Message>gone &lt;now&gt;</Message></Error><RequestId>r</RequestId></ErrorResponse>"), "{xml}");
}

#[test]
fn the_wire_follows_the_request_framing() {
    assert_eq!(
        Wire::of(Some("Logs_20140328.X"), "application/x-amz-json-1.1", ""),
        Wire::Json { version: "1.1".into() }
    );
    assert_eq!(
        Wire::of(Some("X.Y"), "application/x-amz-json-1.0", ""),
        Wire::Json { version: "1.0".into() }
    );
    assert_eq!(
        Wire::of(None, "application/x-www-form-urlencoded; charset=utf-8", ""),
        Wire::Query
    );
    assert_eq!(
        Wire::of(None, "", "Action=DescribeLoadBalancers&Version=2015-12-01"),
        Wire::Query
    );
}

#[test]
fn every_served_model_resolves_its_own_references() {
    for s in services() {
        for op in s.model.operations.values() {
            for r in op.input.iter().chain(op.output.iter()) {
                s.model.shape(&r.shape);
            }
        }
        for shape in s.model.shapes.values() {
            for m in shape.members.values() {
                s.model.shape(&m.shape);
            }
        }
    }
}
