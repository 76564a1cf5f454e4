//! Header values and redirect locations with variables: split at config
//! load into literal text and variables (`${client_ip}`, `${request_id}`,
//! `${host}`, `${path}`, `${query}`; `${route}` is written into the text
//! there and then), so a request only copies bytes into the head it builds.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::IpAddr;

/// A header value or a location, split at load into literal text and the
/// variables filled in per request.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Box<[Part]>,
}

/// A variable a template may hold; where it may is the caller's to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Var {
    ClientIp,
    RequestId,
    Host,
    Path,
    Query,
}

#[derive(Debug, Clone)]
enum Part {
    Text(Box<str>),
    Var(Var),
}

/// What a template's variables stand for in one request. `route` needs no
/// slot: it is written into the template's text at load.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub client_ip: IpAddr,
    pub request_id: &'a [u8],
    pub host: &'a str,
    pub path: &'a str,
    /// With its `?`, or empty.
    pub query: &'a str,
}

impl Template {
    /// Splits `text` at `${name}`; `route` is written in for `${route}`;
    /// `allowed` lists the other variables this place may use.
    pub(crate) fn compile(text: &str, route: &str, allowed: &[Var]) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            lit.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("'{text}': a '${{' without its '}}'"))?;
            let name = &after[..end];
            let var = match name {
                "route" => {
                    if !route.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                        return Err("${route}: the route's name is not printable ASCII".into());
                    }
                    lit.push_str(route);
                    None
                }
                "client_ip" => Some(Var::ClientIp),
                "request_id" => Some(Var::RequestId),
                "host" => Some(Var::Host),
                "path" => Some(Var::Path),
                "query" => Some(Var::Query),
                _ => {
                    return Err(format!(
                        "'{text}': unknown variable ${{{name}}} (known: {})",
                        var_names(allowed)
                    ));
                }
            };
            if let Some(v) = var {
                if !allowed.contains(&v) {
                    return Err(format!(
                        "'{text}': ${{{name}}} is not available here (here: {})",
                        var_names(allowed)
                    ));
                }
                if !lit.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut lit).into()));
                }
                parts.push(Part::Var(v));
            }
            rest = &after[end + 1..];
        }
        lit.push_str(rest);
        if lit.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(format!(
                "'{}': control characters cannot go in a header",
                text.escape_debug()
            ));
        }
        if !lit.is_empty() {
            parts.push(Part::Text(lit.into()));
        }
        Ok(Template {
            parts: parts.into(),
        })
    }

    pub(crate) fn uses(&self, var: Var) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var(v) if *v == var))
    }

    pub(crate) fn is_literal_without(&self, bytes: &[u8]) -> bool {
        self.parts.iter().all(|p| match p {
            Part::Text(t) => !t.bytes().any(|b| bytes.contains(&b)),
            Part::Var(_) => true,
        })
    }

    pub fn render(&self, out: &mut Vec<u8>, vars: &Vars<'_>) {
        for part in &self.parts {
            match part {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Var(Var::ClientIp) => write_ip(out, vars.client_ip),
                Part::Var(Var::RequestId) => out.extend_from_slice(vars.request_id),
                Part::Var(Var::Host) => out.extend_from_slice(vars.host.as_bytes()),
                Part::Var(Var::Path) => out.extend_from_slice(vars.path.as_bytes()),
                Part::Var(Var::Query) => out.extend_from_slice(vars.query.as_bytes()),
            }
        }
    }
}

fn var_names(vars: &[Var]) -> String {
    let mut names = vec!["${route}"];
    names.extend(vars.iter().map(|v| match v {
        Var::ClientIp => "${client_ip}",
        Var::RequestId => "${request_id}",
        Var::Host => "${host}",
        Var::Path => "${path}",
        Var::Query => "${query}",
    }));
    names.join(", ")
}

/// Writes an address as `Display` would. IPv4 digit by digit: the
/// formatting machinery costs several times more, on every request of a
/// route whose rules name `${client_ip}`.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        let _ = write!(out, "{ip}");
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + octet / 10 % 10);
        }
        out.push(b'0' + octet % 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.0.9.100",
            "255.255.255.255",
            "192.168.1.20",
            "::1",
            "fd00::7",
        ] {
            let mut out = Vec::new();
            write_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip.as_bytes());
        }
    }

    #[test]
    fn templates_split_and_render() {
        let vars = [Var::ClientIp, Var::RequestId, Var::Host];
        let t =
            Template::compile("r=${route};ip=${client_ip};id=${request_id}", "api", &vars).unwrap();
        let mut out = Vec::new();
        let v = Vars {
            client_ip: "10.0.0.1".parse().unwrap(),
            request_id: b"abc",
            host: "h",
            path: "",
            query: "",
        };
        t.render(&mut out, &v);
        assert_eq!(out, b"r=api;ip=10.0.0.1;id=abc");
        assert!(
            Template::compile("${nope}", "r", &vars)
                .unwrap_err()
                .contains("unknown variable")
        );
        assert!(
            Template::compile("${path}", "r", &vars)
                .unwrap_err()
                .contains("not available")
        );
        assert!(Template::compile("${host", "r", &vars).is_err());
        assert!(Template::compile("a\r\nb", "r", &vars).is_err());
    }
}
