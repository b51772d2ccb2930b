//! Reading one value out of a response body: json (GJSON paths), yaml and xml (dot paths),
//! prometheus (a metric selector).

use trustscale::scaler::parse_quantity;

/// The body formats of the metrics-api scaler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON, with a GJSON path (`components.worker.tasks`, `items.#`, `items.0.value`).
    Json,
    /// YAML, with a dot path (`a.b.0.c`).
    Yaml,
    /// XML, with a dot path of element names (`queue.stats.depth`, `@attr` for attributes).
    Xml,
    /// Prometheus text exposition, with a selector (`jobs_waiting{queue="high"}`).
    Prometheus,
}

impl Format {
    /// Parses KEDA's `format` values.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "yaml" => Some(Format::Yaml),
            "xml" => Some(Format::Xml),
            "prometheus" => Some(Format::Prometheus),
            _ => None,
        }
    }
}

/// Extracts the value at `location` from `body`.
pub fn extract(format: Format, body: &[u8], location: &str) -> Result<f64, String> {
    match format {
        Format::Json => json(body, location),
        Format::Yaml => yaml(body, location),
        Format::Xml => xml(body, location),
        Format::Prometheus => prometheus(body, location),
    }
}

fn scalar_text(text: &str, location: &str) -> Result<f64, String> {
    parse_quantity(text)
        .map_err(|e| format!("the value at {location:?} is not a number or quantity: {e}"))
}

fn json(body: &[u8], location: &str) -> Result<f64, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 text".to_string())?;
    if !gjson::valid(text) {
        return Err("the body is not valid JSON".into());
    }
    let v = gjson::get(text, location);
    match v.kind() {
        gjson::Kind::Number => Ok(v.f64()),
        gjson::Kind::String => scalar_text(v.str(), location),
        gjson::Kind::True => Ok(1.0),
        gjson::Kind::False => Ok(0.0),
        gjson::Kind::Null if !v.exists() => Err(format!(
            "valueLocation {location:?} matches nothing in the body"
        )),
        gjson::Kind::Object | gjson::Kind::Array | gjson::Kind::Null => Err(format!(
            "valueLocation {location:?} must point to a number, a boolean or a quantity string, not {:?}",
            v.json()
        )),
    }
}

fn yaml(body: &[u8], location: &str) -> Result<f64, String> {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_slice(body).map_err(|e| format!("the body is not valid YAML: {e}"))?;
    let mut cur = &doc;
    for seg in location.split('.') {
        cur = match cur {
            serde_yaml_ng::Value::Mapping(m) => m
                .get(seg)
                .ok_or_else(|| format!("valueLocation {location:?}: no key {seg:?}"))?,
            serde_yaml_ng::Value::Sequence(items) => {
                let i: usize = seg.parse().map_err(|_| {
                    format!("valueLocation {location:?}: {seg:?} is not an index into a list")
                })?;
                items.get(i).ok_or_else(|| {
                    format!("valueLocation {location:?}: index {i} is past the end")
                })?
            }
            _ => {
                return Err(format!(
                    "valueLocation {location:?}: cannot descend into a scalar at {seg:?}"
                ));
            }
        };
    }
    match cur {
        serde_yaml_ng::Value::Number(n) => {
            n.as_f64().ok_or_else(|| "number out of range".to_string())
        }
        serde_yaml_ng::Value::String(s) => scalar_text(s, location),
        serde_yaml_ng::Value::Bool(b) => Ok(f64::from(u8::from(*b))),
        _ => Err(format!(
            "valueLocation {location:?} must point to a number, a boolean or a quantity string"
        )),
    }
}

fn xml(body: &[u8], location: &str) -> Result<f64, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 text".to_string())?;
    let doc =
        roxmltree::Document::parse(text).map_err(|e| format!("the body is not valid XML: {e}"))?;
    let mut segs: Vec<&str> = location.split('.').collect();
    let mut node = doc.root_element();
    if segs.first() == Some(&node.tag_name().name()) {
        segs.remove(0);
    }
    let mut i = 0;
    while i < segs.len() {
        let seg = segs[i];
        if let Some(attr) = seg.strip_prefix('@') {
            if i + 1 != segs.len() {
                return Err(format!(
                    "valueLocation {location:?}: an attribute must come last"
                ));
            }
            let v = node
                .attribute(attr)
                .ok_or_else(|| format!("valueLocation {location:?}: no attribute {attr:?}"))?;
            return scalar_text(v, location);
        }
        // `name.N` picks the N-th element of that name.
        let index = segs.get(i + 1).and_then(|s| s.parse::<usize>().ok());
        let mut matches = node
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == seg);
        node = match index {
            Some(n) => {
                i += 1;
                matches.nth(n)
            }
            None => matches.next(),
        }
        .ok_or_else(|| format!("valueLocation {location:?}: no element {seg:?}"))?;
        i += 1;
    }
    let text: String = node
        .children()
        .filter(|c| c.is_text())
        .filter_map(|c| c.text())
        .collect();
    scalar_text(text.trim(), location)
}

/// A prometheus selector: `name` or `name{label="value",...}`.
fn parse_selector(location: &str) -> Result<(String, Vec<(String, String)>), String> {
    let location = location.trim();
    let Some((name, rest)) = location.split_once('{') else {
        return Ok((location.to_string(), Vec::new()));
    };
    let inner = rest
        .strip_suffix('}')
        .ok_or_else(|| format!("selector {location:?} lacks a closing brace"))?;
    let mut labels = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("selector {location:?}: {part:?} is not label=\"value\""))?;
        labels.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
    }
    Ok((name.trim().to_string(), labels))
}

fn prometheus(body: &[u8], location: &str) -> Result<f64, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 text".to_string())?;
    let (name, labels) = parse_selector(location)?;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| format!("the body is not Prometheus text exposition: {e}"))?;
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k) == Some(v.as_str()))
        })
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
        .collect();
    // As KEDA: the first matching sample wins; labels not named in the selector are ignored.
    match matching.as_slice() {
        [] => Err(format!("no sample matches {location:?}")),
        [first, rest @ ..] => {
            if !rest.is_empty() {
                tracing::debug!(
                    selector = location,
                    samples = rest.len() + 1,
                    "several samples match; using the first"
                );
            }
            Ok(*first)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_reads_its_value() {
        let cases: [(&str, Format, &str, &str, f64); 11] = [
            ("json number", Format::Json, r#"{"a":{"b":7}}"#, "a.b", 7.0),
            (
                "json quantity string",
                Format::Json,
                r#"{"v":"1.5k"}"#,
                "v",
                1500.0,
            ),
            (
                "json array count",
                Format::Json,
                r#"{"items":[1,2,3]}"#,
                "items.#",
                3.0,
            ),
            ("json bool", Format::Json, r#"{"up":true}"#, "up", 1.0),
            (
                "json query",
                Format::Json,
                r#"{"q":[{"n":"a","d":2},{"n":"b","d":9}]}"#,
                r#"q.#(n=="b").d"#,
                9.0,
            ),
            (
                "yaml nested list",
                Format::Yaml,
                "a:\n  - x: 1\n  - x: 250m\n",
                "a.1.x",
                0.25,
            ),
            (
                "xml element",
                Format::Xml,
                "<stats><queue><depth>12</depth></queue></stats>",
                "stats.queue.depth",
                12.0,
            ),
            (
                "xml without root",
                Format::Xml,
                "<stats><depth> 4 </depth></stats>",
                "depth",
                4.0,
            ),
            (
                "xml indexed",
                Format::Xml,
                "<r><q><d>1</d></q><q><d>2</d></q></r>",
                "q.1.d",
                2.0,
            ),
            (
                "xml attribute",
                Format::Xml,
                r#"<r><q depth="5"/></r>"#,
                "q.@depth",
                5.0,
            ),
            (
                "prometheus labels",
                Format::Prometheus,
                "# TYPE jobs gauge\njobs{queue=\"low\"} 3\njobs{queue=\"high\"} 8\n",
                "jobs{queue=\"high\"}",
                8.0,
            ),
        ];
        for (name, format, body, loc, want) in cases {
            let got =
                extract(format, body.as_bytes(), loc).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!((got - want).abs() < 1e-9, "{name}: got {got}");
        }
    }

    #[test]
    fn the_first_of_several_matching_samples_wins_as_in_keda() {
        let body = "jobs{q=\"a\",z=\"1\"} 1\njobs{q=\"a\",z=\"2\"} 2\n";
        assert_eq!(
            extract(Format::Prometheus, body.as_bytes(), "jobs{q=\"a\"}").unwrap(),
            1.0
        );
    }

    #[test]
    fn bad_bodies_and_paths_say_what_is_wrong() {
        let cases: [(&str, Format, &str, &str, &str); 6] = [
            (
                "json missing",
                Format::Json,
                r#"{"a":1}"#,
                "b",
                "matches nothing",
            ),
            (
                "json object",
                Format::Json,
                r#"{"a":{"b":1}}"#,
                "a",
                "must point to a number",
            ),
            (
                "json malformed",
                Format::Json,
                r#"{"a":"#,
                "a",
                "not valid JSON",
            ),
            ("yaml missing", Format::Yaml, "a: 1\n", "b", "no key"),
            (
                "xml malformed",
                Format::Xml,
                "<a><b></a>",
                "b",
                "not valid XML",
            ),
            (
                "prometheus none",
                Format::Prometheus,
                "jobs 1\n",
                "other",
                "no sample",
            ),
        ];
        for (name, format, body, loc, want) in cases {
            let err = extract(format, body.as_bytes(), loc).unwrap_err();
            assert!(err.contains(want), "{name}: {err}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever body a source sends and whatever path a trigger names, extraction
        /// gives a number or an error, never a panic.
        #[test]
        fn extraction_never_panics(
            body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..512),
                "\\PC{0,300}".prop_map(String::into_bytes),
                ("[a-z]{1,5}", -1e9f64..1e9).prop_map(|(k, v)| format!("{{\"{k}\":{{\"v\":{v}}}}}").into_bytes()),
            ],
            location in "[a-z0-9.#@{}=\"_ ]{0,30}",
        ) {
            for format in [Format::Json, Format::Yaml, Format::Xml, Format::Prometheus] {
                if let Ok(v) = extract(format, &body, &location) {
                    prop_assert!(!v.is_nan() || format == Format::Prometheus);
                }
            }
        }
    }
}
