//! What the resolver says to one query, as a pure function of the Cloud Map table: an answer
//! for names in a DNS namespace, or "forward" for every other name.
//!
//! Within a namespace, as Route 53 answers Cloud Map's records:
//! - `<service>.<namespace>`: A/AAAA from the instances' addresses, SRV (priority 1, weight 1,
//!   the instance's port) pointing at `<instance id>.<service>.<namespace>` with its address
//!   in the additional section, or the CNAME; MULTIVALUE answers up to eight instances, in a
//!   rotating order, WEIGHTED one at random;
//! - `<instance id>.<service>.<namespace>` (an SRV target): that instance's A/AAAA;
//! - a name that exists but has no record of the asked type: NOERROR, no answers (NODATA);
//! - any other name in the namespace: NXDOMAIN; both with the namespace's SOA, whose TTL
//!   bounds how long resolvers cache the absence.

use gantry_control::cloudmap::view::is_within;
use gantry_control::cloudmap::{DnsName, DnsTable, DnsZone};
use gantry_types::cloudmap::Instance;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Most instances one MULTIVALUE answer carries (as Route 53).
pub const MULTIVALUE_MAX: usize = 8;

pub enum Decision {
    Answer(Message),
    Forward,
}

/// The answer to `query`; `pick` chooses where a rotation starts or which instance a
/// WEIGHTED answer names (random in the server, fixed in tests).
pub fn answer(table: &DnsTable, query: &Message, pick: u64) -> Decision {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(query.queries.iter().cloned());
    let q = match (query.metadata.op_code, query.queries.as_slice()) {
        (OpCode::Query, [q]) if query.metadata.message_type == MessageType::Query => q,
        (OpCode::Query, _) => return refuse(reply, ResponseCode::FormErr),
        _ => return refuse(reply, ResponseCode::NotImp),
    };
    let name = q.name().to_lowercase().to_ascii();
    let name = name.trim_end_matches('.');
    let Some(zone) = table.zone_of(name) else {
        return Decision::Forward;
    };
    if q.query_class() != DNSClass::IN {
        return refuse(reply, ResponseCode::Refused);
    }
    reply.metadata.authoritative = true;
    let qtype = q.query_type();
    let owner = q.name().clone();
    match lookup(table, name) {
        Some(Found::Service(svc)) => reply.answers = service_records(svc, &owner, qtype, pick),
        Some(Found::Instance(svc, inst)) => reply.answers = target_records(svc, inst, &owner, qtype),
        None if name == zone.name && qtype == RecordType::SOA => reply.answers = vec![soa(zone)],
        None if exists_below(table, zone, name) => {}
        None => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    if reply.answers.is_empty() {
        reply.authorities.push(soa(zone));
    } else if qtype == RecordType::SRV {
        reply.additionals = srv_additionals(table, &reply.answers);
    }
    Decision::Answer(reply)
}

fn refuse(mut reply: Message, code: ResponseCode) -> Decision {
    reply.metadata.response_code = code;
    Decision::Answer(reply)
}

enum Found<'a> {
    Service(&'a DnsName),
    Instance(&'a DnsName, &'a Instance),
}

fn lookup<'a>(table: &'a DnsTable, name: &str) -> Option<Found<'a>> {
    if let Some(svc) = table.names.get(name) {
        return Some(Found::Service(svc));
    }
    let (first, rest) = name.split_once('.')?;
    let svc = table.names.get(rest)?;
    let has_srv = svc.records.iter().any(|r| r.kind == "SRV");
    let inst = svc.instances.iter().find(|i| i.id.eq_ignore_ascii_case(first))?;
    has_srv.then_some(Found::Instance(svc, inst))
}

/// True when `name` is the zone apex or an ancestor of a service name (an empty non-terminal
/// such as `b.internal` for `a.b.internal`): those exist, with no records.
fn exists_below(table: &DnsTable, zone: &DnsZone, name: &str) -> bool {
    name == zone.name || table.names.keys().any(|n| n != name && is_within(n, name))
}

fn ttl_of(svc: &DnsName, kind: &str) -> Option<u32> {
    svc.records
        .iter()
        .find(|r| r.kind == kind)
        .map(|r| r.ttl.clamp(0, u32::MAX as i64) as u32)
}

/// The instances an answer names: a rotation of up to eight, or one for WEIGHTED.
fn chosen<'a>(svc: &'a DnsName, usable: Vec<&'a Instance>, pick: u64) -> Vec<&'a Instance> {
    if usable.is_empty() {
        return usable;
    }
    let start = (pick % usable.len() as u64) as usize;
    let take = if svc.weighted { 1 } else { MULTIVALUE_MAX };
    usable
        .iter()
        .cycle()
        .skip(start)
        .take(take.min(usable.len()))
        .copied()
        .collect()
}

fn service_records(svc: &DnsName, owner: &Name, qtype: RecordType, pick: u64) -> Vec<Record> {
    if let Some(ttl) = ttl_of(svc, "CNAME") {
        let usable: Vec<&Instance> = svc.instances.iter().collect();
        return chosen(svc, usable, pick)
            .into_iter()
            .filter_map(|i| i.attributes.get("AWS_INSTANCE_CNAME"))
            .filter_map(|c| Name::from_ascii(format!("{}.", c.trim_end_matches('.'))).ok())
            .map(|target| Record::from_rdata(owner.clone(), ttl, RData::CNAME(CNAME(target))))
            .collect();
    }
    match qtype {
        RecordType::SRV => {
            let Some(ttl) = ttl_of(svc, "SRV") else { return vec![] };
            let usable: Vec<&Instance> = svc.instances.iter().filter(|i| port(i).is_some()).collect();
            chosen(svc, usable, pick)
                .into_iter()
                .filter_map(|i| {
                    let target = Name::from_ascii(format!("{}.{}", i.id, owner.to_ascii())).ok()?;
                    let srv = SRV::new(1, 1, port(i)?, target);
                    Some(Record::from_rdata(owner.clone(), ttl, RData::SRV(srv)))
                })
                .collect()
        }
        RecordType::A | RecordType::AAAA => {
            let all: Vec<&Instance> = svc.instances.iter().collect();
            let usable: Vec<&Instance> = all.into_iter().filter(|i| has_address(i, qtype)).collect();
            address_records(svc, &chosen(svc, usable, pick), owner, qtype)
        }
        _ => vec![],
    }
}

fn port(i: &Instance) -> Option<u16> {
    i.attributes.get("AWS_INSTANCE_PORT")?.parse().ok()
}

fn has_address(i: &Instance, qtype: RecordType) -> bool {
    let key = if qtype == RecordType::A {
        "AWS_INSTANCE_IPV4"
    } else {
        "AWS_INSTANCE_IPV6"
    };
    i.attributes.contains_key(key)
}

fn address_kind(qtype: RecordType) -> Option<&'static str> {
    match qtype {
        RecordType::A => Some("A"),
        RecordType::AAAA => Some("AAAA"),
        _ => None,
    }
}

/// A or AAAA records for instances, when the service has that record type.
fn address_records(svc: &DnsName, instances: &[&Instance], owner: &Name, qtype: RecordType) -> Vec<Record> {
    match address_kind(qtype).and_then(|kind| ttl_of(svc, kind)) {
        Some(ttl) => addresses(instances, owner, qtype, ttl),
        None => vec![],
    }
}

/// An SRV target's A or AAAA record: Cloud Map makes them for each instance with an address
/// even when the service has only SRV records (then with the SRV record's TTL).
fn target_records(svc: &DnsName, inst: &Instance, owner: &Name, qtype: RecordType) -> Vec<Record> {
    let ttl = address_kind(qtype).and_then(|kind| ttl_of(svc, kind).or_else(|| ttl_of(svc, "SRV")));
    match ttl {
        Some(ttl) => addresses(&[inst], owner, qtype, ttl),
        None => vec![],
    }
}

fn addresses(instances: &[&Instance], owner: &Name, qtype: RecordType, ttl: u32) -> Vec<Record> {
    instances
        .iter()
        .filter_map(|i| {
            let rdata = match qtype {
                RecordType::A => RData::A(A(i.attributes.get("AWS_INSTANCE_IPV4")?.parse::<Ipv4Addr>().ok()?)),
                _ => RData::AAAA(AAAA(i.attributes.get("AWS_INSTANCE_IPV6")?.parse::<Ipv6Addr>().ok()?)),
            };
            Some(Record::from_rdata(owner.clone(), ttl, rdata))
        })
        .collect()
}

/// The SRV targets' addresses, so a client needs no second lookup.
fn srv_additionals(table: &DnsTable, answers: &[Record]) -> Vec<Record> {
    let mut out = vec![];
    for r in answers {
        let RData::SRV(srv) = &r.data else { continue };
        let target = srv.target.to_lowercase().to_ascii();
        if let Some(Found::Instance(svc, inst)) = lookup(table, target.trim_end_matches('.')) {
            for qtype in [RecordType::A, RecordType::AAAA] {
                out.extend(target_records(svc, inst, &srv.target, qtype));
            }
        }
    }
    out
}

fn soa(zone: &DnsZone) -> Record {
    let origin = Name::from_ascii(format!("{}.", zone.name)).unwrap_or_else(|_| Name::root());
    let host = |label: &str| {
        Name::from_ascii(label)
            .and_then(|n| n.append_domain(&origin))
            .unwrap_or_else(|_| origin.clone())
    };
    let soa = SOA::new(host("ns1"), host("hostmaster"), 1, 7200, 900, 1_209_600, zone.soa_ttl);
    Record::from_rdata(origin.clone(), zone.soa_ttl, RData::SOA(soa))
}
