//! Log output: env_logger (level filter from `RUST_LOG`, default `info`) with the records'
//! key/value fields (`log`'s `kv`) written as `key=value` after the message, or, with
//! `--log-format json`, one JSON object per line (serde_json).

use std::io::Write;

use log::kv::{Error, Key, Value, VisitSource, VisitValue};
use serde_json::{Map, Value as Json};

/// Install the logger; `json` selects one JSON object per line.
pub fn init(json: bool) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if json {
        b.format(|buf, record| {
            let mut obj = Map::new();
            obj.insert(
                "timestamp".into(),
                Json::String(buf.timestamp_millis().to_string()),
            );
            obj.insert("level".into(), Json::String(record.level().to_string()));
            obj.insert("target".into(), Json::String(record.target().to_string()));
            obj.insert("message".into(), Json::String(record.args().to_string()));
            let _ = record.key_values().visit(&mut JsonFields(&mut obj));
            writeln!(buf, "{}", Json::Object(obj))
        });
    } else {
        b.format_timestamp_millis().format_key_values(|buf, kvs| {
            kvs.visit(&mut TextFields(buf))
                .map_err(std::io::Error::other)
        });
    }
    b.init();
}

/// The fields as `key=value`, the value quoted (Rust string escapes) when it is empty or
/// holds a space, a quote or an `=`, so that a line splits back into its fields.
struct TextFields<'a>(&'a mut env_logger::fmt::Formatter);

impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), Error> {
        let v = value.to_string();
        if v.is_empty() || v.contains([' ', '"', '=']) || v.contains(char::is_control) {
            write!(self.0, " {key}={v:?}")?;
        } else {
            write!(self.0, " {key}={v}")?;
        }
        Ok(())
    }
}

/// The fields as members of the line's object (numbers and booleans keep their type); a
/// field never replaces `timestamp`, `level`, `target` or `message`.
struct JsonFields<'a>(&'a mut Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), Error> {
        let mut v = ToJson(None);
        value.visit(&mut v)?;
        let v = v.0.unwrap_or_else(|| Json::String(value.to_string()));
        self.0.entry(key.as_str().to_string()).or_insert(v);
        Ok(())
    }
}

struct ToJson(Option<Json>);

impl<'v> VisitValue<'v> for ToJson {
    fn visit_any(&mut self, value: Value) -> Result<(), Error> {
        self.0 = Some(Json::String(value.to_string()));
        Ok(())
    }
    fn visit_u64(&mut self, value: u64) -> Result<(), Error> {
        self.0 = Some(Json::from(value));
        Ok(())
    }
    fn visit_i64(&mut self, value: i64) -> Result<(), Error> {
        self.0 = Some(Json::from(value));
        Ok(())
    }
    fn visit_f64(&mut self, value: f64) -> Result<(), Error> {
        self.0 = Some(Json::from(value));
        Ok(())
    }
    fn visit_bool(&mut self, value: bool) -> Result<(), Error> {
        self.0 = Some(Json::Bool(value));
        Ok(())
    }
    fn visit_str(&mut self, value: &str) -> Result<(), Error> {
        self.0 = Some(Json::String(value.to_string()));
        Ok(())
    }
}
