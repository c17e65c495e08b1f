//! The command line's progress bar: the library reports how a download advances through
//! [`sregistry::remote::Progress`], and this draws it on stderr (only on a terminal, and
//! not under `--quiet`; the caller decides), with "waiting for ..." when a remote has
//! been silent for a few seconds.

use std::sync::Mutex;

use sregistry::remote::Progress;

/// A bar drawn with indicatif, made when a download starts and cleared when it ends.
#[derive(Default)]
pub struct Bar(Mutex<Option<indicatif::ProgressBar>>);

impl Progress for Bar {
    fn start(&self, total: Option<u64>, at: u64) {
        let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_position(at);
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(bar);
        }
    }

    fn advance(&self, done: u64) {
        if let Ok(slot) = self.0.lock()
            && let Some(bar) = slot.as_ref()
        {
            bar.set_position(done);
        }
    }

    fn waiting(&self, what: &str) {
        let msg = format!("waiting for {what}");
        match self
            .0
            .lock()
            .ok()
            .as_ref()
            .and_then(|slot| slot.as_ref().cloned())
        {
            Some(bar) => bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    fn finish(&self) {
        if let Ok(mut slot) = self.0.lock()
            && let Some(bar) = slot.take()
        {
            bar.finish_and_clear();
        }
    }
}
