//! `powerapi top`: a live view of watts per process. The collector runs on its own thread and
//! sends immutable snapshots; this thread only handles keys and draws (see `state`, `input`,
//! `render`), so each part is tested alone.

pub mod input;
pub mod render;
pub mod snapshot;
pub mod state;

use std::{
    io::{self, IsTerminal, Stdout},
    sync::{
        Arc,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use crossterm::{
    cursor, event, execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use ratatui::{Terminal, backend::CrosstermBackend};
use thiserror::Error;

use crate::{
    collect::{CollectError, Collector, CollectorConfig},
    record::{Filter, Granularity, build_records, run_info},
    sink::{FileSink, OutputSpec, Sink, SinkError},
};
use snapshot::TopSnapshot;
use state::App;

#[derive(Debug, Error)]
pub enum TopError {
    #[error(
        "powerapi top needs a terminal ({0} is not a TTY); use `powerapi record -o FILE` for files and pipes"
    )]
    NoTty(&'static str),
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("terminal: {0}")]
    Terminal(#[from] io::Error),
    #[error("{0}")]
    Collector(String),
}

#[derive(Clone, Debug)]
pub struct TopConfig {
    pub collector: CollectorConfig,
    pub interval: Duration,
    pub filter: Filter,
    pub record: Option<OutputSpec>,
}

/// Puts the terminal back however we leave: normal return, error (drop) or panic (hook).
struct TerminalGuard;

fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

type Message = Result<Arc<TopSnapshot>, String>;

/// The collector thread: one snapshot per interval; on stop, a last partial interval for the
/// `--record` file, then exit.
fn collect_loop(
    mut collector: Collector,
    config: TopConfig,
    mut sink: Option<FileSink>,
    tx: mpsc::Sender<Message>,
    stop: Receiver<()>,
) {
    let run = run_info(&collector);
    // User names come from this system's passwd, not from under --sysfs-root.
    let mut ids = crate::identity::Identities::new(true);
    let started = Instant::now();
    let mut seq = 0u64;
    loop {
        seq += 1;
        let deadline = started + config.interval * seq as u32;
        let stopped = !matches!(
            stop.recv_timeout(deadline.saturating_duration_since(Instant::now())),
            Err(RecvTimeoutError::Timeout)
        );
        let snapshot = match collector.collect() {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        if let Some(sink) = sink.as_mut() {
            let interval = snapshot.interval(seq, stopped);
            let records = build_records(
                &run,
                &snapshot,
                collector.resolver(),
                &interval,
                Granularity::Process,
                &config.filter,
                &mut ids,
            );
            if let Err(e) = sink.write_interval(&records) {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        }
        if stopped {
            return;
        }
        let top = snapshot::build(
            seq,
            &snapshot,
            &run.counters,
            run.cpus,
            collector.resolver(),
            &mut ids,
            &config.filter,
        );
        if tx.send(Ok(Arc::new(top))).is_err() {
            return;
        }
    }
}

pub fn run_top(config: &TopConfig, signals: &Receiver<()>) -> Result<(), TopError> {
    // Everything that can fail with a one-line message fails before the terminal is touched.
    if !io::stdout().is_terminal() {
        return Err(TopError::NoTty("stdout"));
    }
    if !io::stdin().is_terminal() {
        return Err(TopError::NoTty("stdin"));
    }
    if let Some(output) = &config.record {
        output.check()?;
    }
    let collector = Collector::start(&config.collector)?;
    // Opened only now: a start that failed has left an existing file as it was.
    let sink = config
        .record
        .as_ref()
        .map(|output| output.open(signals))
        .transpose()?;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let mut app = App::new(config.interval.as_secs_f64(), no_color);

    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel();
    let thread_config = config.clone();
    let worker =
        std::thread::spawn(move || collect_loop(collector, thread_config, sink, tx, stop_rx));

    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous_hook(info);
    }));
    enable_raw_mode()?;
    let guard = TerminalGuard;
    execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
    let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    let result = event_loop(&mut terminal, &mut app, &rx, signals);

    let _ = stop_tx.send(());
    drop(terminal);
    drop(guard);
    let _ = std::panic::take_hook();
    // Wait for the last partial interval of --record to be written.
    let _ = worker.join();
    result
}

/// SIGTERM to `pid`, confirmed by the user; the result, for the status line.
fn send_sigterm(pid: u32) -> String {
    // SAFETY: kill with a pid the user chose and confirmed; errors come back in errno.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    if rc == 0 {
        format!("sent SIGTERM to {pid}")
    } else {
        format!("cannot signal {pid}: {}", io::Error::last_os_error())
    }
}

fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    app: &mut App,
    snapshots: &Receiver<Message>,
    signals: &Receiver<()>,
) -> Result<(), TopError> {
    let mut dirty = true;
    loop {
        if dirty {
            let size = terminal.size()?;
            app.page_rows = usize::from(size.height.saturating_sub(14)).max(1);
            terminal.draw(|frame| render::draw(frame, app))?;
            dirty = false;
        }
        if event::poll(Duration::from_millis(100))? {
            match event::read()? {
                event::Event::Key(key) => {
                    if let Some(action) = input::action_for(key, input::Mode::of(app)) {
                        if !app.apply(action) {
                            return Ok(());
                        }
                        if let Some(pid) = app.signal_request.take() {
                            app.status = Some(send_sigterm(pid));
                        }
                        dirty = true;
                    }
                }
                event::Event::Resize(..) => {
                    terminal.autoresize()?;
                    dirty = true;
                }
                _ => {}
            }
        }
        loop {
            match snapshots.try_recv() {
                Ok(Ok(snapshot)) => {
                    app.ingest(snapshot);
                    dirty = true;
                }
                Ok(Err(message)) => return Err(TopError::Collector(message)),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(TopError::Collector("the collector stopped".into()));
                }
            }
        }
        if signals.try_recv().is_ok() {
            return Ok(());
        }
    }
}
