//! The resolver's answers as a function of Cloud Map records (no sockets, no root).

use gantry_control::cloudmap::DnsTable;
use gantry_dns::{answer, Decision, MULTIVALUE_MAX};
use gantry_store::KeyValue;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::json;

fn kv(key: &str, v: serde_json::Value) -> KeyValue {
    KeyValue {
        key: format!("/servicediscovery/123456789012/us-east-1/{key}"),
        value: serde_json::to_vec(&v).unwrap(),
        create_revision: 1,
        mod_revision: 1,
        version: 1,
    }
}

fn namespace(name: &str, id: &str, kind: &str) -> KeyValue {
    kv(
        &format!("namespaces/{name}"),
        json!({"item": {"Id": id, "Arn": "a", "ResourceOwner": "1", "Name": name, "Type": kind, "CreateDate": 0.0,
            "Properties": {"DnsProperties": {"HostedZoneId": "Z1", "SOA": {"TTL": 15}}}}}),
    )
}

fn service(ns: &str, id: &str, name: &str, records: serde_json::Value, routing: &str, custom: bool) -> KeyValue {
    let mut item = json!({"Id": id, "Arn": "a", "ResourceOwner": "1", "Name": name, "NamespaceId": ns,
        "Type": "DNS_HTTP", "CreateDate": 0.0, "CreatedByAccount": "1",
        "DnsConfig": {"RoutingPolicy": routing, "DnsRecords": records}});
    if custom {
        item["HealthCheckCustomConfig"] = json!({});
    }
    kv(&format!("services/{ns}/{name}"), json!({ "item": item }))
}

fn instance(srv: &str, id: &str, ip: &str, port: u16, health: &str) -> KeyValue {
    kv(
        &format!("instances/{srv}/{id}"),
        json!({"Id": id, "CreatedByAccount": "1", "Health": health,
            "Attributes": {"AWS_INSTANCE_IPV4": ip, "AWS_INSTANCE_PORT": port.to_string()}}),
    )
}

fn table() -> DnsTable {
    let mut kvs = vec![
        namespace("internal", "ns-1", "DNS_PRIVATE"),
        namespace("jobs", "ns-2", "HTTP"),
        service(
            "ns-1",
            "srv-1",
            "web",
            json!([{"Type": "A", "TTL": 5}, {"Type": "SRV", "TTL": 7}]),
            "MULTIVALUE",
            true,
        ),
        service(
            "ns-1",
            "srv-2",
            "one",
            json!([{"Type": "A", "TTL": 5}]),
            "WEIGHTED",
            false,
        ),
        service(
            "ns-1",
            "srv-3",
            "db.legacy",
            json!([{"Type": "A", "TTL": 5}]),
            "MULTIVALUE",
            false,
        ),
        service(
            "ns-1",
            "srv-4",
            "echo",
            json!([{"Type": "SRV", "TTL": 9}]),
            "MULTIVALUE",
            true,
        ),
        instance("srv-4", "e1", "10.217.0.1", 45000, "HEALTHY"),
        instance("srv-1", "t1", "10.0.0.1", 8080, "HEALTHY"),
        instance("srv-1", "t2", "10.0.0.2", 8080, "UNHEALTHY"),
        instance("srv-1", "t3", "10.0.0.3", 8081, "HEALTHY"),
        instance("srv-2", "a", "10.0.1.1", 80, "UNKNOWN"),
        instance("srv-2", "b", "10.0.1.2", 80, "UNKNOWN"),
    ];
    for i in 0..12 {
        kvs.push(instance(
            "srv-3",
            &format!("d{i}"),
            &format!("10.0.2.{i}"),
            5432,
            "UNKNOWN",
        ));
    }
    DnsTable::from_listing(&kvs)
}

fn ask(table: &DnsTable, name: &str, qtype: RecordType, pick: u64) -> Option<Message> {
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    match answer(table, &q, pick) {
        Decision::Answer(m) => {
            assert_eq!(m.metadata.id, q.metadata.id);
            Some(m)
        }
        Decision::Forward => None,
    }
}

fn addresses(m: &Message) -> Vec<String> {
    let mut out: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

#[test]
fn healthy_instances_only_with_the_record_ttl() {
    let m = ask(&table(), "web.internal.", RecordType::A, 0).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(addresses(&m), ["10.0.0.1", "10.0.0.3"]);
    assert!(m.answers.iter().all(|r| r.ttl == 5));
    // Case does not matter in DNS names.
    assert_eq!(
        addresses(&ask(&table(), "WEB.Internal.", RecordType::A, 0).unwrap()).len(),
        2
    );
}

#[test]
fn srv_points_at_instance_names_that_resolve() {
    let t = table();
    let m = ask(&t, "web.internal.", RecordType::SRV, 0).unwrap();
    let mut srvs: Vec<(u16, String)> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect();
    srvs.sort();
    assert_eq!(
        srvs,
        [
            (8080, "t1.web.internal.".to_string()),
            (8081, "t3.web.internal.".to_string())
        ]
    );
    assert!(m.answers.iter().all(|r| r.ttl == 7));
    assert_eq!(m.additionals.len(), 2, "the targets' addresses come along");
    assert_eq!(
        addresses(&ask(&t, "t3.web.internal.", RecordType::A, 0).unwrap()),
        ["10.0.0.3"]
    );
    // An unhealthy instance's name is not answered.
    let gone = ask(&t, "t2.web.internal.", RecordType::A, 0).unwrap();
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn an_srv_only_services_targets_resolve_with_its_ttl() {
    let t = table();
    // The service itself has no address records: only SRV.
    assert!(addresses(&ask(&t, "echo.internal.", RecordType::A, 0).unwrap()).is_empty());
    let m = ask(&t, "echo.internal.", RecordType::SRV, 0).unwrap();
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.additionals.len(), 1, "the target's address comes along");
    // As Cloud Map makes them: the target's A record, with the SRV record's TTL.
    let target = ask(&t, "e1.echo.internal.", RecordType::A, 0).unwrap();
    assert_eq!(addresses(&target), ["10.217.0.1"]);
    assert!(target.answers.iter().all(|r| r.ttl == 9));
    assert!(ask(&t, "e1.echo.internal.", RecordType::AAAA, 0)
        .unwrap()
        .answers
        .is_empty());
}

#[test]
fn multivalue_caps_at_eight_and_rotates_weighted_picks_one() {
    let t = table();
    let first = addresses(&ask(&t, "db.legacy.internal.", RecordType::A, 0).unwrap());
    let later = addresses(&ask(&t, "db.legacy.internal.", RecordType::A, 5).unwrap());
    assert_eq!(first.len(), MULTIVALUE_MAX);
    assert_ne!(first, later, "another query starts elsewhere in the rotation");
    let mut seen = std::collections::BTreeSet::new();
    for pick in 0..4 {
        let one = addresses(&ask(&t, "one.internal.", RecordType::A, pick).unwrap());
        assert_eq!(one.len(), 1);
        seen.insert(one[0].clone());
    }
    assert_eq!(seen.len(), 2, "WEIGHTED spreads over both instances");
}

#[test]
fn absent_names_types_and_other_zones() {
    let t = table();
    let nx = ask(&t, "nope.internal.", RecordType::A, 0).unwrap();
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(nx.authorities[0].data, RData::SOA(_)));
    assert_eq!(nx.authorities[0].ttl, 15);
    // Names that exist without the asked type, and empty non-terminals: NODATA.
    for (name, qtype) in [
        ("web.internal.", RecordType::AAAA),
        ("legacy.internal.", RecordType::A),
        ("internal.", RecordType::A),
    ] {
        let m = ask(&t, name, qtype, 0).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(m.answers.is_empty() && !m.authorities.is_empty(), "{name}");
    }
    let soa = ask(&t, "internal.", RecordType::SOA, 0).unwrap();
    assert!(matches!(soa.answers[0].data, RData::SOA(_)));
    // HTTP namespaces are not DNS zones; other names go to the node's resolvers.
    assert!(ask(&t, "q.jobs.", RecordType::A, 0).is_none());
    assert!(ask(&t, "example.com.", RecordType::A, 0).is_none());
    assert!(ask(&t, "notinternal.", RecordType::A, 0).is_none());
}

#[test]
fn malformed_and_unusual_queries() {
    let t = table();
    let mut two = Message::query();
    two.add_query(Query::query(Name::from_ascii("web.internal.").unwrap(), RecordType::A));
    two.add_query(Query::query(Name::from_ascii("one.internal.").unwrap(), RecordType::A));
    match answer(&t, &two, 0) {
        Decision::Answer(m) => assert_eq!(m.metadata.response_code, ResponseCode::FormErr),
        Decision::Forward => panic!("two questions are refused, not forwarded"),
    }
    let mut status = Message::query();
    status.metadata.op_code = hickory_proto::op::OpCode::Status;
    match answer(&t, &status, 0) {
        Decision::Answer(m) => assert_eq!(m.metadata.response_code, ResponseCode::NotImp),
        Decision::Forward => panic!("non-query opcodes are not forwarded"),
    }
}
