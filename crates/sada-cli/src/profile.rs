//! Where an evaluation spends its time: wall time summed per `tracing` span name (the model
//! code marks its parts with spans: resnet, transformer, self_attention, ...).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Span name -> total time inside spans of that name (nested spans count in both).
#[derive(Clone, Default)]
pub struct SpanTimes(Arc<Mutex<HashMap<&'static str, Duration>>>);

impl SpanTimes {
    /// Install a subscriber that records into the returned totals (for the whole process).
    pub fn install() -> anyhow::Result<Self> {
        use tracing_subscriber::layer::SubscriberExt;
        let times = SpanTimes::default();
        let subscriber = tracing_subscriber::registry().with(times.clone());
        tracing::subscriber::set_global_default(subscriber).map_err(|e| anyhow::anyhow!("cannot install the profiler: {e}"))?;
        Ok(times)
    }

    pub fn reset(&self) {
        self.totals().clear();
    }

    /// Seconds per span name, largest first.
    pub fn snapshot(&self) -> Vec<(&'static str, f64)> {
        let mut v: Vec<(&'static str, f64)> = self.totals().iter().map(|(k, d)| (*k, d.as_secs_f64())).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    fn totals(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Duration>> {
        // a panic while holding the lock cannot leave the map inconsistent: keep using it
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Entered(Instant);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanTimes {
    fn on_new_span(&self, _: &Attributes<'_>, _: &Id, _: Context<'_, S>) {}

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Entered(Instant::now()));
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(Entered(start)) = span.extensions_mut().remove::<Entered>() {
                *self.totals().entry(span.name()).or_default() += start.elapsed();
            }
        }
    }
}
