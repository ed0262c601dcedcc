//! Publishing: one message from `--data`, or many from `--file`/stdin (one per line), to Kafka, NATS
//! (core or JetStream) or Kinesis, with thousands in flight, an optional rate, a progress bar on a
//! terminal, a summary line, and an error when any message was not acknowledged by the broker.
//! Each bus's `Sink` is beside its command: `topic` (Kafka), `trigger::nats`, `trigger::kinesis`.

use std::future::Future;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use governor::{Quota, RateLimiter};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// Where messages come from and how fast they go.
#[derive(Debug, Clone, Args)]
pub struct Input {
    /// One message.
    #[arg(long)]
    pub data: Option<String>,
    /// Messages from a file, one per line (`-`: stdin). With neither --data nor --file, lines
    /// are read from stdin when it is not a terminal.
    #[arg(long, conflicts_with = "data")]
    pub file: Option<PathBuf>,
    /// Key of every message (Kafka; Kinesis: the partition key).
    #[arg(long)]
    pub key: Option<String>,
    /// Split each line at the first SEP: the key before it, the message after.
    #[arg(long)]
    pub key_separator: Option<String>,
    /// A header `name=value` on every message (Kafka, NATS); repeatable.
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// At most this many messages per second.
    #[arg(long)]
    pub rate: Option<NonZeroU32>,
    /// Send the input this many times.
    #[arg(long, default_value_t = 1)]
    pub repeat: u64,
    /// Stop after this many messages (with --data alone: send it this many times).
    #[arg(long)]
    pub count: Option<u64>,
    /// How long a message may wait for the broker's acknowledgement.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?} must be name=value")),
    }
}

/// One message to send.
pub struct Message {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// What became of some messages.
#[derive(Debug, Default)]
pub struct Outcome {
    pub acked: u64,
    pub failed: u64,
    pub error: Option<String>,
}

impl Outcome {
    pub fn acked(n: u64) -> Self {
        Self { acked: n, ..Self::default() }
    }

    pub fn failed(n: u64, error: String) -> Self {
        Self { acked: 0, failed: n, error: Some(error) }
    }
}

/// The broker's answer for messages already handed over.
pub type Pending = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A bus the CLI publishes to.
pub trait Sink {
    /// Hands one message over. A `Pending` comes back for each message or batch handed to the
    /// broker; `Err` fails this message only.
    fn send(&mut self, msg: Message) -> impl Future<Output = Result<Option<Pending>, String>> + Send;
    /// Hands over what is buffered.
    fn finish(&mut self) -> impl Future<Output = Option<Pending>> + Send;
}

enum Lines {
    /// Messages given on the command line, sent in turn.
    Given(Vec<String>),
    File(PathBuf, Box<dyn AsyncBufRead + Unpin + Send>),
    Stdin(Box<dyn AsyncBufRead + Unpin + Send>),
}

/// The messages of one run, in order.
pub struct Source {
    lines: Lines,
    next_given: usize,
    rounds_left: u64,
    left: Option<u64>,
    key: Option<Vec<u8>>,
    separator: Option<Vec<u8>>,
    buf: Vec<u8>,
}

impl Source {
    /// `given`: messages from flags other than --data (--records, --message).
    pub async fn open(input: &Input, given: Vec<String>) -> anyhow::Result<Self> {
        let mut given = given;
        given.extend(input.data.clone());
        if input.repeat == 0 {
            bail!("--repeat: must be at least 1");
        }
        let lines = match (&input.file, given.is_empty()) {
            (Some(_), false) => bail!("--file: give messages either in a file or on the command line, not both"),
            (Some(path), true) if path.as_os_str() == "-" => Lines::Stdin(stdin()),
            (Some(path), true) => Lines::File(path.clone(), open(path).await?),
            (None, false) => Lines::Given(given),
            (None, true) => {
                use std::io::IsTerminal;
                if std::io::stdin().is_terminal() {
                    bail!("nothing to publish: give --data, --file, or pipe lines on stdin");
                }
                Lines::Stdin(stdin())
            }
        };
        if matches!(lines, Lines::Stdin(_)) && input.repeat > 1 {
            bail!("--repeat: stdin cannot be read twice; write it to a file and use --file");
        }
        // --data with --count and no --repeat: the message, --count times.
        let rounds = match (&lines, input.count) {
            (Lines::Given(_), Some(_)) if input.repeat == 1 => u64::MAX,
            _ => input.repeat,
        };
        if input.key.is_some() && input.key_separator.is_some() {
            bail!("--key: give a key for every message or --key-separator, not both");
        }
        Ok(Self {
            lines,
            next_given: 0,
            rounds_left: rounds,
            left: input.count,
            key: input.key.clone().map(String::into_bytes),
            separator: input.key_separator.clone().map(String::into_bytes).filter(|s| !s.is_empty()),
            buf: Vec::new(),
        })
    }

    /// How many messages there will be, when that is known before reading.
    pub fn len_hint(&self) -> Option<u64> {
        match &self.lines {
            Lines::Given(g) => {
                let all = (g.len() as u64).saturating_mul(self.rounds_left);
                Some(self.left.map_or(all, |l| l.min(all)))
            }
            _ => self.left,
        }
    }

    pub async fn next(&mut self) -> anyhow::Result<Option<Message>> {
        if self.left == Some(0) {
            return Ok(None);
        }
        let Some(line) = self.next_line().await? else { return Ok(None) };
        if let Some(l) = self.left.as_mut() {
            *l -= 1;
        }
        Ok(Some(self.split(line)))
    }

    async fn next_line(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            if self.rounds_left == 0 {
                return Ok(None);
            }
            match &mut self.lines {
                Lines::Given(g) => {
                    if let Some(m) = g.get(self.next_given) {
                        self.next_given += 1;
                        return Ok(Some(m.clone().into_bytes()));
                    }
                    self.next_given = 0;
                    self.rounds_left -= 1;
                    if g.is_empty() {
                        return Ok(None);
                    }
                }
                Lines::File(path, reader) => {
                    self.buf.clear();
                    let n =
                        reader.read_until(b'\n', &mut self.buf).await.with_context(|| format!("{}", path.display()))?;
                    if n > 0 {
                        return Ok(Some(trim_newline(&self.buf)));
                    }
                    self.rounds_left -= 1;
                    if self.rounds_left > 0 {
                        *reader = open(path).await?;
                    }
                }
                Lines::Stdin(reader) => {
                    self.buf.clear();
                    let n = reader.read_until(b'\n', &mut self.buf).await.context("stdin")?;
                    if n > 0 {
                        return Ok(Some(trim_newline(&self.buf)));
                    }
                    self.rounds_left = 0;
                }
            }
        }
    }

    fn split(&self, line: Vec<u8>) -> Message {
        if let Some(sep) = &self.separator {
            if let Some(i) = line.windows(sep.len()).position(|w| w == sep.as_slice()) {
                return Message { key: Some(line[..i].to_vec()), value: line[i + sep.len()..].to_vec() };
            }
        }
        Message { key: self.key.clone(), value: line }
    }
}

fn trim_newline(buf: &[u8]) -> Vec<u8> {
    let mut end = buf.len();
    if buf[..end].ends_with(b"\n") {
        end -= 1;
    }
    if buf[..end].ends_with(b"\r") {
        end -= 1;
    }
    buf[..end].to_vec()
}

fn stdin() -> Box<dyn AsyncBufRead + Unpin + Send> {
    Box::new(BufReader::with_capacity(1 << 20, tokio::io::stdin()))
}

async fn open(path: &PathBuf) -> anyhow::Result<Box<dyn AsyncBufRead + Unpin + Send>> {
    let file = tokio::fs::File::open(path).await.with_context(|| format!("--file {}", path.display()))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
}

/// Sends every message of `source` to `sink`; prints a summary. `target` names the bus for
/// messages (`Kafka topic orders at 127.0.0.1:9092`).
pub async fn publish<S: Sink>(mut sink: S, mut source: Source, input: &Input, target: &str) -> anyhow::Result<()> {
    let progress = progress_bar(source.len_hint());
    let (tx, mut rx) = mpsc::channel::<Pending>(65_536);
    // After the first failure no more input is read: a broker that lost one message is not sent
    // a million more (what was handed over is still waited for and counted).
    let failing = Arc::new(AtomicBool::new(false));
    let collector = {
        let (progress, failing) = (progress.clone(), failing.clone());
        tokio::spawn(async move {
            let mut total = Outcome::default();
            while let Some(pending) = rx.recv().await {
                let o = pending.await;
                progress.inc(o.acked);
                total.acked += o.acked;
                total.failed += o.failed;
                if o.failed > 0 {
                    failing.store(true, Ordering::Relaxed);
                }
                if total.error.is_none() {
                    total.error = o.error;
                }
            }
            total
        })
    };
    let limiter = input.rate.map(|r| RateLimiter::direct(Quota::per_second(r)));
    let start = Instant::now();
    let (mut sent, mut refused, mut first_refusal) = (0u64, 0u64, None);
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while !failing.load(Ordering::Relaxed) {
        let msg = tokio::select! {
            biased;
            _ = &mut ctrl_c => { interrupted = true; break; }
            m = source.next() => m?,
        };
        let Some(msg) = msg else { break };
        if let Some(l) = &limiter {
            l.until_ready().await;
        }
        sent += 1;
        match sink.send(msg).await {
            Ok(Some(p)) => tx.send(p).await.map_err(|_| anyhow!("the acknowledgement collector stopped"))?,
            Ok(None) => {}
            Err(e) => {
                refused += 1;
                first_refusal.get_or_insert(e);
                failing.store(true, Ordering::Relaxed);
            }
        }
    }
    if let Some(p) = sink.finish().await {
        tx.send(p).await.map_err(|_| anyhow!("the acknowledgement collector stopped"))?;
    }
    drop(tx);
    let total = collector.await.context("the acknowledgement collector failed")?;
    progress.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let failed = total.failed + refused;
    println!(
        "Published {sent} message{} to {target} in {secs:.1} s ({:.0}/s): {} acknowledged, {failed} failed.",
        if sent == 1 { "" } else { "s" },
        total.acked as f64 / secs.max(1e-9),
        total.acked,
    );
    if failed > 0 || total.acked < sent {
        let why = total.error.or(first_refusal).unwrap_or_else(|| "no answer".to_string());
        bail!("{} of {sent} messages were not acknowledged by {target}: {why}", sent - total.acked.min(sent));
    }
    if interrupted {
        bail!("interrupted after {sent} messages (all acknowledged)");
    }
    Ok(())
}

/// A bar with the rate on a terminal (stderr); nothing when stderr is not one.
fn progress_bar(len: Option<u64>) -> ProgressBar {
    let bar = match len {
        Some(n) if n > 1 => ProgressBar::new(n),
        Some(_) => return ProgressBar::hidden(),
        None => ProgressBar::new_spinner(),
    };
    let template = if len.is_some() {
        "{bar:40} {pos}/{len} acknowledged, {per_sec}, ETA {eta}"
    } else {
        "{spinner} {pos} acknowledged, {per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{parse_header, Input, Source};

    fn input() -> Input {
        Input {
            data: None,
            file: None,
            key: None,
            key_separator: None,
            headers: Vec::new(),
            rate: None,
            repeat: 1,
            count: None,
            timeout: Duration::from_secs(1),
        }
    }

    async fn all(mut s: Source) -> Vec<(Option<String>, String)> {
        let mut out = Vec::new();
        while let Some(m) = s.next().await.expect("reads") {
            out.push((
                m.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
                String::from_utf8_lossy(&m.value).into_owned(),
            ));
        }
        out
    }

    #[tokio::test]
    async fn lines_keys_repeats_and_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        std::fs::write(&path, "a|1\r\nb|2\nno-separator\n").expect("write");
        let mut i = Input { file: Some(path.clone()), key_separator: Some("|".into()), repeat: 2, ..input() };
        let got = all(Source::open(&i, vec![]).await.expect("opens")).await;
        let one = vec![(Some("a".into()), "1".into()), (Some("b".into()), "2".into()), (None, "no-separator".into())];
        assert_eq!(got, [one.clone(), one].concat(), "CRLF is trimmed, the file is read twice");

        i.count = Some(4);
        assert_eq!(all(Source::open(&i, vec![]).await.expect("opens")).await.len(), 4, "--count caps");

        let data = Input { data: Some("x".into()), key: Some("k".into()), count: Some(3), ..input() };
        let s = Source::open(&data, vec![]).await.expect("opens");
        assert_eq!(s.len_hint(), Some(3));
        assert_eq!(all(s).await, vec![(Some("k".into()), "x".into()); 3], "--data with --count repeats it");

        let records = Source::open(&input(), vec!["r1".into(), "r2".into()]).await.expect("opens");
        assert_eq!(records.len_hint(), Some(2));
        assert_eq!(all(records).await.len(), 2);
    }

    #[tokio::test]
    async fn bad_inputs_are_refused() {
        let missing = Input { file: Some("/nonexistent/lines.txt".into()), ..input() };
        let e = Source::open(&missing, vec![]).await.err().expect("missing file");
        assert!(format!("{e:#}").contains("/nonexistent/lines.txt"), "{e:#}");
        let both = Input { data: Some("x".into()), key: Some("k".into()), key_separator: Some(",".into()), ..input() };
        assert!(Source::open(&both, vec![]).await.is_err());
        let zero = Input { data: Some("x".into()), repeat: 0, ..input() };
        assert!(Source::open(&zero, vec![]).await.is_err());
        assert!(parse_header("novalue").is_err());
        assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
    }
}
