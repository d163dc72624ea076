//! The VPC port calls, once the gateway let them through: `GET /v1/{project_id}/ports/{port_id}`,
//! `GET /v1/{project_id}/ports` and `PUT /v1/{project_id}/ports/{port_id}`. The VPC service's
//! own checks (project header, query, body), the fault each meets, its effect and its answer,
//! over the ports of [`super::ports`] (which says what is modelled, and from where).

use serde_json::{Value, json};

use super::call::{EnvelopeError, Late, Outcome, SimRequest, Step, envelope};
use super::ports::{ListQuery, PairsError, SimAddressPair, check_pair};
use super::state::{CallRecord, CloudOperation, Effect, Inner, PortOperation, apply_after, take_fault};

/// Why the simulator refuses an update's body. The texts are what clients read in the 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("an update must set at least one attribute of the port")]
    Empty,
    /// Huawei takes more (`name`, `security_groups`, …); the simulator models this one alone.
    #[error("port.{0} is not supported by the simulator (only allowed_address_pairs)")]
    Unsupported(String),
    #[error(transparent)]
    Pairs(#[from] PairsError),
}

/// Parses an update's body: exactly `{"port": {"allowed_address_pairs": [...]}}`, each pair
/// `{ip_address[, mac_address]}`, checked. Bounded: the body is at most axum's body limit, the
/// list at most `max_pairs` (the setting in force), each field at most
/// [`MAX_PAIR_FIELD_LEN`](super::ports::MAX_PAIR_FIELD_LEN).
pub(super) fn parse_update(body: &[u8], max_pairs: usize) -> Result<Vec<SimAddressPair>, UpdateError> {
    let port = envelope(body, "port")?;
    if port.is_empty() {
        return Err(UpdateError::Empty);
    }
    if let Some(k) = port.keys().find(|k| *k != "allowed_address_pairs") {
        return Err(UpdateError::Unsupported(k.clone()));
    }
    let list = port.get("allowed_address_pairs").and_then(Value::as_array).ok_or(PairsError::NotAnArray)?;
    if list.len() > max_pairs {
        return Err(PairsError::TooMany(max_pairs).into());
    }
    let mut pairs = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let entry = entry.as_object().ok_or(PairsError::NotAnObject(i))?;
        if let Some(k) = entry.keys().find(|k| !matches!(k.as_str(), "ip_address" | "mac_address")) {
            return Err(PairsError::UnknownField(i, k.clone()).into());
        }
        let ip_address = match entry.get("ip_address") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(PairsError::NotAString(i, "ip_address").into()),
            None => return Err(PairsError::NoIp(i).into()),
        };
        let mac_address = match entry.get("mac_address") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(PairsError::NotAString(i, "mac_address").into()),
        };
        let pair = SimAddressPair { ip_address, mac_address };
        check_pair(i, &pair)?;
        pairs.push(pair);
    }
    Ok(pairs)
}

/// The VPC service's own check once the gateway let a call through: `X-Project-Id` must name the
/// project in the path. `VPC.0007` is the documented "tenant ID in the URL differs" code.
fn check_project(req: &SimRequest<'_>) -> Step<()> {
    if req.headers.get("x-project-id").and_then(|v| v.to_str().ok()) != Some(req.project_id) {
        return Err(Outcome::error(400, "VPC.0007", "urlTenantId is not equal tokenTenantId"));
    }
    Ok(())
}

/// `GET /v1/{project_id}/ports/{port_id}`, after the gateway's checks.
pub(super) fn get_port(inner: &mut Inner, req: &SimRequest<'_>, port_id: &str, record: &mut CallRecord) -> Outcome {
    if let Err(refused) = check_project(req) {
        return refused;
    }
    record.port_operation = Some(PortOperation::GetPort);
    let fault = take_fault(inner, CloudOperation::GetPort, Some(port_id));
    let answer = match inner.ports.visible(req.project_id, port_id, &inner.missing) {
        Some(port) => Outcome::ok(json!({"port": port.wire()})),
        None => Outcome::error(404, "VPC.2502", format!("Port {port_id} not found")),
    }
    .unless(fault);
    // The answer is taken: a change armed for after this read happens now, under the same lock,
    // so the reader sees the list before it and every call decided later the list after it.
    if answer.code.is_none() {
        record.after_read_fired = inner.ports.fire_after_read([port_id]);
    }
    answer
}

/// `GET /v1/{project_id}/ports?...`, after the gateway's checks. A query the simulator does not
/// understand is refused with `VPC.2500` ("Param is invalid", documented for port parameters).
pub(super) fn list_ports(inner: &mut Inner, req: &SimRequest<'_>, record: &mut CallRecord) -> Outcome {
    if let Err(refused) = check_project(req) {
        return refused;
    }
    record.port_operation = Some(PortOperation::ListPorts);
    let query = match ListQuery::parse(req.uri.query()) {
        Ok(q) => q,
        Err(why) => return Outcome::error(400, "VPC.2500", format!("Param is invalid: {why}")),
    };
    let fault = take_fault(inner, CloudOperation::ListPorts, None);
    let page = inner.ports.list(req.project_id, &query, &inner.missing);
    let shown: Vec<String> = page.iter().map(|p| p.id.clone()).collect();
    let page: Vec<Value> = page.iter().map(|p| p.wire()).collect();
    let answer = Outcome::ok(json!({"ports": page})).unless(fault);
    // As for one port: every port the page showed.
    if answer.code.is_none() {
        record.after_read_fired = inner.ports.fire_after_read(shown.iter().map(String::as_str));
    }
    answer
}

/// `PUT /v1/{project_id}/ports/{port_id}`, after the gateway's checks: replaces the port's
/// `allowed_address_pairs` whole and answers the whole port. A body the simulator refuses answers
/// 400 `VPC.2500` ("Param is invalid": documented for creating a port; that an update answers
/// it is NOT confirmed) and consumes no fault. An error fault with `apply: true` writes the list
/// anyway (a cloud that did the work but failed to say so); a fault with `apply_after_ms` writes
/// it that long after arrival instead, whatever the answer.
pub(super) fn update_port(inner: &mut Inner, req: &SimRequest<'_>, port_id: &str, record: &mut CallRecord) -> Outcome {
    if let Err(refused) = check_project(req) {
        return refused;
    }
    record.port_operation = Some(PortOperation::UpdatePort);
    // The simulator's strictness, as for ECS: the client always sends JSON.
    let content_type = req.headers.get("content-type").and_then(|v| v.to_str().ok());
    if !content_type.is_some_and(|v| v.starts_with("application/json")) {
        return Outcome::error(400, "VPC.2500", "Param is invalid: Content-Type must be application/json");
    }
    let pairs = match parse_update(req.body, inner.ports.max_pairs()) {
        Ok(pairs) => pairs,
        Err(why) => return Outcome::error(400, "VPC.2500", format!("Param is invalid: {why}")),
    };
    let fault = take_fault(inner, CloudOperation::UpdatePort, Some(port_id));
    let exists = inner.ports.visible(req.project_id, port_id, &inner.missing).is_some();
    let after = apply_after(fault.as_ref());
    if let Some(f) = &fault
        && !(200..300).contains(&f.status)
    {
        let answer = Outcome::fault(f.clone());
        return match after {
            _ if !exists => answer,
            Some(after) => answer.with_late(Late { after, effect: Effect::Pairs { port_id: port_id.into(), pairs } }),
            None => {
                if f.apply {
                    inner.ports.set_pairs(port_id, pairs);
                }
                answer
            }
        };
    }
    if !exists {
        // `VPC.2502` as for reads; that an update answers the same is NOT confirmed.
        return Outcome::error(404, "VPC.2502", format!("Port {port_id} not found")).unless(fault);
    }
    if let Some(after) = after {
        // Answered as if written (the port with the new list); the list itself lands later.
        let Some(mut shown) = inner.ports.get(port_id).cloned() else {
            return Outcome::error(404, "VPC.2502", format!("Port {port_id} not found"));
        };
        shown.allowed_address_pairs.clone_from(&pairs);
        let effect = Effect::Pairs { port_id: port_id.into(), pairs };
        return Outcome::ok(json!({"port": shown.wire()})).with_late(Late { after, effect }).unless(fault);
    }
    inner.ports.set_pairs(port_id, pairs);
    // Another writer overtaking this one, armed by a test: its list is what the answer shows.
    if inner.ports.fire_after_write(port_id) {
        record.after_read_fired = vec![port_id.to_string()];
    }
    match inner.ports.get(port_id) {
        Some(port) => Outcome::ok(json!({"port": port.wire()})).unless(fault),
        None => Outcome::error(404, "VPC.2502", format!("Port {port_id} not found")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::simulator::config::DEFAULT_MAX_PAIRS;

    fn pairs(body: &str) -> Result<Vec<SimAddressPair>, String> {
        parse_update(body.as_bytes(), DEFAULT_MAX_PAIRS).map_err(|e| e.to_string())
    }

    /// An update body of `n` pairs.
    fn body_of(n: usize) -> String {
        format!(r#"{{"port":{{"allowed_address_pairs":[{}]}}}}"#, vec![r#"{"ip_address":"10.0.0.1"}"#; n].join(","))
    }

    #[test]
    fn the_list_is_bounded_by_the_limit_given() {
        for limit in [1, 7, 250] {
            assert_eq!(parse_update(body_of(limit).as_bytes(), limit).map(|p| p.len()), Ok(limit));
            assert_eq!(
                parse_update(body_of(limit + 1).as_bytes(), limit).map_err(|e| e.to_string()),
                Err(format!("allowed_address_pairs holds at most {limit} pairs"))
            );
        }
    }

    fn pair(ip: &str) -> SimAddressPair {
        SimAddressPair { ip_address: ip.into(), mac_address: None }
    }

    #[test]
    fn update_bodies_are_checked() {
        assert_eq!(pairs(r#"{"port":{"allowed_address_pairs":[]}}"#), Ok(vec![]));
        assert_eq!(
            pairs(
                r#"{"port":{"allowed_address_pairs":[{"ip_address":"1.1.1.1/0"},{"ip_address":"10.0.0.0/24","mac_address":"FA:16:3e:00:00:0a"},{"ip_address":"fd00::1/128"},{"ip_address":"192.168.0.9","mac_address":null}]}}"#
            ),
            Ok(vec![
                pair("1.1.1.1/0"),
                SimAddressPair { ip_address: "10.0.0.0/24".into(), mac_address: Some("FA:16:3e:00:00:0a".into()) },
                pair("fd00::1/128"),
                pair("192.168.0.9"),
            ])
        );
        let long = format!(r#"{{"port":{{"allowed_address_pairs":[{{"ip_address":"{}"}}]}}}}"#, "1".repeat(10_000));
        let many = body_of(DEFAULT_MAX_PAIRS + 1);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for (bad, why) in [
            ("[]", "request body must be a JSON object"),
            (r#"{"port":{"allowed_address_pairs":[]},"x":1}"#, r#"unknown field "x""#),
            (r#"{}"#, "field port (object) is required"),
            (r#"{"port":[]}"#, "field port (object) is required"),
            (r#"{"port":{}}"#, "an update must set at least one attribute of the port"),
            (r#"{"port":{"name":"a"}}"#, "port.name is not supported by the simulator (only allowed_address_pairs)"),
            (r#"{"port":{"allowed_address_pairs":null}}"#, "allowed_address_pairs must be an array"),
            (r#"{"port":{"allowed_address_pairs":{}}}"#, "allowed_address_pairs must be an array"),
            (many.as_str(), "allowed_address_pairs holds at most 100 pairs"),
            (r#"{"port":{"allowed_address_pairs":["10.0.0.1"]}}"#, "allowed_address_pairs[0] must be an object"),
            (r#"{"port":{"allowed_address_pairs":[{}]}}"#, "allowed_address_pairs[0].ip_address is required"),
            (
                r#"{"port":{"allowed_address_pairs":[{"ip_address":1}]}}"#,
                "allowed_address_pairs[0].ip_address must be a string",
            ),
            (
                r#"{"port":{"allowed_address_pairs":[{"ip_address":"10.0.0.1","mac_address":1}]}}"#,
                "allowed_address_pairs[0].mac_address must be a string",
            ),
            (
                r#"{"port":{"allowed_address_pairs":[{"ip_address":"10.0.0.1","x":1}]}}"#,
                "unknown field allowed_address_pairs[0].x",
            ),
            (
                r#"{"port":{"allowed_address_pairs":[{"ip_address":"10.0.0.1"},{"ip_address":"0.0.0.0/0"}]}}"#,
                "allowed_address_pairs[1].ip_address must not be 0.0.0.0 or 0.0.0.0/0",
            ),
            (
                r#"{"port":{"allowed_address_pairs":[{"ip_address":"0.0.0.0"}]}}"#,
                "allowed_address_pairs[0].ip_address must not be 0.0.0.0 or 0.0.0.0/0",
            ),
            (
                r#"{"port":{"allowed_address_pairs":[{"ip_address":"10.0.0.1","mac_address":"fa:16:3e:00:00"}]}}"#,
                r#"allowed_address_pairs[0].mac_address "fa:16:3e:00:00" is not a MAC address"#,
            ),
        ] {
            assert_eq!(pairs(bad).err().as_deref(), Some(why), "{bad:.80}");
        }
        // Not JSON, or nested past serde_json's recursion limit: refused, no stack overflow.
        for bad in ["", "{", deep.as_str()] {
            assert!(pairs(bad).unwrap_err().starts_with("request body is not JSON: "), "{bad:.80}");
        }
        // The refused text is bounded too.
        let text = pairs(&long).unwrap_err();
        assert!(text.len() < 200, "{text}");
        for ip in [
            "x",
            "",
            "10.0.0.1/",
            "10.0.0.1/33",
            "10.0.0.1/+8",
            "10.0.0.1/0008",
            "fd00::1/129",
            "10.0.0.1/8/8",
            " 10.0.0.1",
            "10.0.0.256",
        ] {
            assert!(check_pair(0, &pair(ip)).is_err(), "{ip:?}");
        }
        for ip in ["1.1.1.1/0", "0.0.0.0/8", "::/0", "10.0.0.1/32", "fd00::/64"] {
            assert_eq!(check_pair(0, &pair(ip)), Ok(()), "{ip:?}");
        }
    }
}
