//! Log output of the binary: `text` (tracing's key=value lines) or `json` (one JSON object
//! per line: `ts` in ms since the epoch, `level`, `target`, `message` and the event's
//! fields), both on stderr. The access log is target `access` at info level.

use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// A layer writing each event as one JSON line on stderr.
#[derive(Debug, Default)]
pub struct JsonLines;

struct Fields(serde_json::Map<String, serde_json::Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), value.to_string().into());
    }
}

impl<S: Subscriber> Layer<S> for JsonLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut f = Fields(serde_json::Map::new());
        f.0.insert(
            "ts".into(),
            serde_json::Value::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ),
        );
        f.0.insert("level".into(), meta.level().as_str().into());
        f.0.insert("target".into(), meta.target().into());
        event.record(&mut f);
        let mut line = serde_json::Value::Object(f.0).to_string();
        line.push('\n');
        // One write per line so concurrent events do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}
