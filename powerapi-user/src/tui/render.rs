//! Drawing: a pure function of the app state (which holds the snapshot on screen).

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap},
};

use super::state::{App, Column};
use crate::{attribution::IdleSource, idle_estimate::IdleMethod};

/// Colours that read on light and dark terminals (the 8 ANSI colours, no backgrounds but the
/// badge), or none at all under NO_COLOR.
struct Palette {
    title: Style,
    badge: Style,
    warn: Style,
    dim: Style,
    selected: Style,
    header: Style,
}

impl Palette {
    fn new(no_color: bool) -> Self {
        if no_color {
            let bold = Style::default().add_modifier(Modifier::BOLD);
            return Self {
                title: bold,
                badge: bold.add_modifier(Modifier::REVERSED),
                warn: bold,
                dim: Style::default(),
                selected: Style::default().add_modifier(Modifier::REVERSED),
                header: bold,
            };
        }
        Self {
            title: Style::default()
                .fg(Color::Cyan)
                .add_modifier(Modifier::BOLD),
            badge: Style::default()
                .fg(Color::Black)
                .bg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
            warn: Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
            dim: Style::default().add_modifier(Modifier::DIM),
            selected: Style::default().add_modifier(Modifier::REVERSED),
            header: Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
        }
    }
}

fn watts(w: f64) -> String {
    if w >= 100.0 {
        format!("{w:.0}")
    } else if w >= 10.0 {
        format!("{w:.1}")
    } else {
        format!("{w:.2}")
    }
}

fn joules(j: f64) -> String {
    if j >= 1e6 {
        format!("{:.1}M", j / 1e6)
    } else if j >= 1e4 {
        format!("{:.1}k", j / 1e3)
    } else {
        format!("{j:.1}")
    }
}

fn si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Rounding noise (−0.001 W) must not read as negative energy.
fn shown_watts(w: f64) -> String {
    watts(if w.abs() < 0.005 { 0.0 } else { w })
}

/// Resident memory, KiB → `812K`, `12.3M`, `1.2G`.
fn memory(kib: u64) -> String {
    let k = kib as f64;
    if k >= 1024.0 * 1024.0 {
        format!("{:.1}G", k / 1024.0 / 1024.0)
    } else if k >= 1024.0 {
        format!("{:.1}M", k / 1024.0)
    } else {
        format!("{kib}K")
    }
}

/// Joins `parts` in order while they fit in `width` columns: what matters most goes first, and
/// a narrow terminal loses the tail, never the middle of a word.
fn fit(parts: &[String], width: usize) -> String {
    let mut out = String::new();
    for part in parts {
        if out.chars().count() + part.chars().count() > width {
            break;
        }
        out.push_str(part);
    }
    out
}

/// One part of the header's first line, for `fit_ranked`.
struct HeaderPart {
    /// Parts of lower rank are shortened, then left out, first.
    rank: u8,
    text: String,
    short: Option<String>,
}

impl HeaderPart {
    fn new(rank: u8, text: String) -> Self {
        Self {
            rank,
            text,
            short: None,
        }
    }

    /// A shorter form, taken before any part is left out.
    fn or(self, short: String) -> Self {
        Self {
            short: Some(short),
            ..self
        }
    }
}

/// Joins `parts` with ` · `, in their order, in at most `width` columns. Unlike `fit`, the
/// tail is not what goes: parts take their short forms, lowest rank first, and only then are
/// parts left out, lowest rank first, so a narrow terminal keeps what matters most wherever it
/// stands on the line.
fn fit_ranked(parts: &[HeaderPart], width: usize) -> String {
    const SEPARATOR: &str = " · ";
    let mut short = vec![false; parts.len()];
    let mut kept = vec![true; parts.len()];
    let line = |short: &[bool], kept: &[bool]| {
        parts
            .iter()
            .enumerate()
            .filter(|&(i, _)| kept[i])
            .map(|(i, part)| match (&part.short, short[i]) {
                (Some(text), true) => text.as_str(),
                _ => part.text.as_str(),
            })
            .collect::<Vec<_>>()
            .join(SEPARATOR)
    };
    let fits = |text: &str| text.chars().count() <= width;
    let mut by_rank: Vec<usize> = (0..parts.len()).collect();
    by_rank.sort_by_key(|&i| parts[i].rank);
    for &i in &by_rank {
        if fits(&line(&short, &kept)) {
            break;
        }
        short[i] = parts[i].short.is_some();
    }
    for &i in &by_rank {
        if fits(&line(&short, &kept)) {
            break;
        }
        kept[i] = false;
    }
    line(&short, &kept)
}

/// The key hints, most useful first, as many as fit.
fn footer_hints(width: usize, group: &str) -> String {
    let hints = [
        "h help".to_string(),
        "  q quit".into(),
        "  / search".into(),
        "  </> sort".into(),
        format!("  g group ({group})"),
        "  t tree".into(),
        "  k kill".into(),
        "  c cmdline".into(),
        "  p pause".into(),
        "  r reset".into(),
        "  P/M cpu/mem".into(),
        "  I invert".into(),
    ];
    fit(&hints, width)
}

fn header_lines(app: &App, p: &Palette, width: usize) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let Some(s) = &app.shown else {
        lines.push(Line::from(Span::styled(
            "powerapi top · waiting for the first interval…",
            p.title,
        )));
        return lines;
    };
    let metric = s
        .energy
        .as_ref()
        .and_then(|e| e.domains.first())
        .map_or("-".to_string(), |d| d.metric.clone());
    let mut first = vec![Span::styled("powerapi top ", p.title)];
    // Badges first, so that a narrow terminal never cuts them off.
    if s.energy.as_ref().is_some_and(|e| e.estimated) {
        first.push(Span::styled(" ESTIMATED ", p.badge));
        first.push(Span::raw(" "));
    }
    if app.paused {
        first.push(Span::styled(" PAUSED ", p.badge));
        first.push(Span::raw(" "));
    }
    let used: usize = first.iter().map(|span| span.content.chars().count()).sum();
    // Ranked: at 80 columns the meter's own cost (what measuring costs) outlasts the CPU count
    // and the interval, which the user chose or knows anyway.
    let mut parts = vec![match &s.energy {
        Some(e) => HeaderPart::new(5, e.source.clone()),
        None => HeaderPart::new(5, "no energy source (CPU only)".into()).or("CPU only".into()),
    }];
    if s.energy.is_some() {
        parts.push(HeaderPart::new(3, format!("metric {metric}")).or(metric));
    }
    parts.extend([
        HeaderPart::new(1, format!("{} CPUs", s.cpus)),
        HeaderPart::new(2, format!("{:.1}s", s.duration_s)),
        HeaderPart::new(4, format!("meter {:.1}% CPU", s.meter_cpu_percent)),
    ]);
    first.push(Span::raw(fit_ranked(&parts, width.saturating_sub(used))));
    lines.push(Line::from(first));
    if let Some(e) = &s.energy {
        lines.push(Line::from(vec![
            Span::styled(format!("total {} W", watts(e.total_w)), p.title),
            Span::raw(format!(
                "  idle est. {} W  · {} J since start",
                watts(e.idle_w),
                joules(app.view().machine_joules)
            )),
        ]));
        let seconds = s.duration_s.max(1e-9);
        let shown = 3;
        for d in e.domains.iter().take(shown) {
            let idle_source = match d.idle_source {
                IdleSource::Flag => "flag",
                IdleSource::Model => "model",
                // An intercept extrapolated from a machine never seen quiet: said, not hidden.
                IdleSource::Online if d.idle_method == Some(IdleMethod::Extrapolated) => "weak",
                IdleSource::Online => "online",
                IdleSource::Baseline => "baseline",
                IdleSource::Persisted => "saved",
                IdleSource::Formula => "fitted",
                IdleSource::None => "none yet",
            };
            lines.push(Line::from(format!(
                "  {:<7} s{} {:>6} W  attributed {:>6}  idle {:>6} ({idle_source})  unattr. {:>5}",
                d.key.domain.name(),
                d.key.socket,
                shown_watts(d.power_w),
                shown_watts(d.attributed_j / seconds),
                shown_watts(d.idle_j / seconds),
                shown_watts(d.unattributed_j / seconds),
            )));
        }
        if e.domains.len() > shown {
            lines.push(Line::from(Span::styled(
                format!("  … {} more domains", e.domains.len() - shown),
                p.dim,
            )));
        }
    }
    let l = &s.losses;
    if l.lost_slices + l.exit_overflow + l.stale_slices + l.counter_read_errors > 0 {
        lines.push(Line::from(Span::styled(
            format!(
                "dropped: {} slices ({:.1} ms) · exit overflow {} · stale {} · counter errors {}",
                l.lost_slices,
                l.lost_ns as f64 / 1e6,
                l.exit_overflow,
                l.stale_slices,
                l.counter_read_errors
            ),
            p.warn,
        )));
    }
    lines
}

fn cell(app: &App, column: Column, r: &super::state::ViewRow) -> String {
    match column {
        Column::Id => r.id.clone(),
        Column::User => r.user.clone(),
        Column::Command => r.command.clone(),
        Column::Watts => {
            if app.shown.as_ref().is_some_and(|s| s.energy.is_some()) {
                watts(r.watts)
            } else {
                "-".into()
            }
        }
        Column::Joules => joules(r.joules_total),
        Column::Cpu => format!("{:.1}", r.cpu_percent),
        Column::Memory => memory(r.rss_kib),
        Column::CyclesPerSec => r.cycles_per_s.map_or("-".into(), si),
        Column::Ipc => r.ipc.map_or("-".into(), |v| format!("{v:.2}")),
        Column::Cgroup => r.cgroup.clone(),
    }
}

fn width(column: Column) -> Constraint {
    match column {
        Column::Id => Constraint::Length(7),
        Column::User => Constraint::Length(8),
        Column::Command => Constraint::Min(12),
        Column::Watts => Constraint::Length(7),
        Column::Joules => Constraint::Length(8),
        Column::Cpu => Constraint::Length(6),
        Column::Memory => Constraint::Length(7),
        Column::CyclesPerSec => Constraint::Length(8),
        Column::Ipc => Constraint::Length(5),
        Column::Cgroup => Constraint::Min(10),
    }
}

/// Watts as the sparkline's integers (centiwatts), and the peak the chart is scaled to.
fn scaled(values: impl Iterator<Item = f64>) -> (Vec<u64>, f64) {
    let data: Vec<u64> = values.map(|w| (w * 100.0).max(0.0) as u64).collect();
    let peak = data.iter().copied().max().unwrap_or(0) as f64 / 100.0;
    (data, peak)
}

fn history_max(peak: f64) -> u64 {
    ((peak * 100.0) as u64).max(1)
}

pub fn draw(frame: &mut Frame, app: &App) {
    let p = Palette::new(app.no_color);
    let area = frame.area();
    // Grouping and sorting cost the most: do it once per frame.
    let rows = app.rows();
    let header = header_lines(app, &p, usize::from(area.width));
    let [top, charts, table_area, footer] = Layout::vertical([
        Constraint::Length(header.len() as u16),
        Constraint::Length(if area.height >= 20 { 4 } else { 0 }),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header), top);

    if charts.height > 0 {
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(charts);
        let view = app.view();
        let (total, peak) = scaled(view.total_history.iter().copied());
        let title = view
            .total_history
            .back()
            .map_or("total power".to_string(), |w| {
                format!(
                    "total {} W · scale 0–{} W · {} s",
                    watts(*w),
                    watts(peak),
                    (view.total_history.len() as f64 * app.interval_s).round()
                )
            });
        frame.render_widget(
            Sparkline::default()
                .block(Block::default().borders(Borders::TOP).title(title))
                .data(&total)
                .max(history_max(peak)),
            left,
        );
        let selected = rows.get(app.selected);
        let (history, peak) = selected
            .and_then(|r| app.history(&r.key))
            .map(|h| scaled(h.iter().copied()))
            .unwrap_or_default();
        let title = selected.map_or("selected: none".to_string(), |r| {
            format!(
                "{} {} W · scale 0–{} W",
                r.command.trim_start_matches(['└', ' ']),
                watts(r.watts),
                watts(peak)
            )
        });
        frame.render_widget(
            Sparkline::default()
                .block(Block::default().borders(Borders::TOP).title(title))
                .data(&history)
                .max(history_max(peak)),
            right,
        );
    }

    let columns = app.columns();
    let header_row = Row::new(columns.iter().map(|c| {
        let mut name = c.header(app.group_by).to_string();
        if *c == app.sort {
            name.push(if app.descending { '▼' } else { '▲' });
        }
        Cell::from(name)
    }))
    .style(p.header);
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|r| Row::new(columns.iter().map(|c| Cell::from(cell(app, *c, r)))))
        .collect();
    let empty = table_rows.is_empty();
    let table = Table::new(table_rows, columns.iter().map(|c| width(*c)))
        .header(header_row)
        .row_highlight_style(p.selected)
        .block(Block::default().borders(Borders::TOP).title(format!(
            " by {} · {} rows ",
            app.group_by.label(),
            rows.len()
        )));
    let mut state = TableState::default().with_selected((!empty).then_some(app.selected));
    frame.render_stateful_widget(table, table_area, &mut state);
    if empty {
        let message = if app.filter.is_empty() {
            "no task ran in this interval"
        } else {
            "no row matches the filter"
        };
        let inner = Rect {
            y: table_area.y + 2,
            height: 1,
            ..table_area
        };
        frame.render_widget(Paragraph::new(Span::styled(message, p.dim)), inner);
    }

    let footer_line = if let Some((pid, command)) = &app.pending_signal {
        Line::from(vec![
            Span::styled(format!("send SIGTERM to {pid} ({command})? "), p.warn),
            Span::raw("y yes  n no"),
        ])
    } else if let Some(status) = &app.status {
        Line::from(Span::raw(status.clone()))
    } else if app.editing_filter {
        Line::from(vec![
            Span::styled("/ filter: ", p.title),
            Span::raw(format!("{}▏", app.filter)),
            Span::styled("  (Enter keeps, Esc clears)", p.dim),
        ])
    } else {
        let mut spans = Vec::new();
        if !app.filter.is_empty() {
            spans.push(Span::styled(format!("filter: {} ", app.filter), p.badge));
            spans.push(Span::raw(" "));
        }
        let used: usize = spans.iter().map(|span| span.content.chars().count()).sum();
        spans.push(Span::styled(
            footer_hints(
                usize::from(area.width).saturating_sub(used),
                app.group_by.label(),
            ),
            p.dim,
        ));
        Line::from(spans)
    };
    frame.render_widget(Paragraph::new(footer_line), footer);

    if app.help {
        draw_help(frame, area, &p);
    }
}

const HELP: &[(&str, &str)] = &[
    (
        "q  F10  Ctrl-C",
        "quit (Esc clears an active filter, or quits)",
    ),
    ("↑ ↓  PgUp PgDn  Home End", "move the selection"),
    ("<  >  F6", "previous / next sort column"),
    ("P  M", "sort by CPU / by resident memory"),
    ("I", "invert the sort order"),
    (
        "/  F3  F4",
        "search and filter by text; Enter keeps it, Esc clears it",
    ),
    ("g", "group by: process, thread, cgroup, command, user"),
    ("t  F5", "processes as a tree (parent and children)"),
    ("k  F9", "send SIGTERM to the selected process (asks first)"),
    ("c", "show the selected process's full command line"),
    (
        "p",
        "pause the screen, joules and charts included (measuring goes on)",
    ),
    ("r", "reset the joules since start"),
    ("h  ?  F1", "this help (Esc, q or h closes it)"),
];

fn draw_help(frame: &mut Frame, area: Rect, p: &Palette) {
    let width = area.width.min(76);
    let height = (HELP.len() as u16 + 6).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!("{k:<26}"), p.title),
                Span::raw(*v),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.push(Line::from(Span::styled(
        "W: package + DRAM power of the interval; J: energy since start or r",
        p.dim,
    )));
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(" help ")),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::{
        attribution::DomainReport,
        energy::Domain,
        energy::DomainKey,
        tui::state::{Action, GroupBy, tests::snapshot},
    };

    fn screen(app: &App, w: u16, h: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("terminal");
        terminal.draw(|f| draw(f, app)).expect("draw");
        let buffer = terminal.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buffer[(x, y)].symbol().to_string())
                    .collect::<String>()
                    + "\n"
            })
            .collect()
    }

    fn app_with(counters: bool) -> App {
        app_with_idle(counters, Some(IdleMethod::Intercept))
    }

    fn app_with_idle(counters: bool, idle_method: Option<IdleMethod>) -> App {
        let mut app = App::new(1.0, true);
        let mut s = snapshot(counters);
        if let Some(e) = s.energy.as_mut() {
            e.domains.push(DomainReport {
                key: DomainKey {
                    domain: Domain::Package,
                    socket: 0,
                },
                measured_j: 30.0,
                attributed_j: 20.0,
                idle_j: 10.0,
                unattributed_j: 0.0,
                power_w: 30.0,
                idle_w: 10.0,
                idle_source: IdleSource::Online,
                idle_method,
                metric: "cycles".into(),
                formula: None,
            });
        }
        app.ingest(Arc::new(s));
        app
    }

    #[test]
    fn normal_view() {
        let app = app_with(true);
        let text = screen(&app, 120, 30);
        assert!(
            text.contains("powerapi top powercap · metric cycles"),
            "{text}"
        );
        assert!(text.contains("total 30.0 W"), "{text}");
        assert!(
            text.contains("W▼") && text.contains("CYC/s") && text.contains("IPC"),
            "{text}"
        );
        assert!(!text.contains("ESTIMATED"));
        let burn = text
            .lines()
            .position(|l| l.contains("burn"))
            .expect("burn row");
        let nginx = text
            .lines()
            .position(|l| l.contains(" nginx "))
            .expect("nginx row");
        assert!(burn < nginx, "sorted by power:\n{text}");
        assert!(
            text.contains("package s0   30.0 W  attributed   20.0  idle   10.0 (online)"),
            "{text}"
        );
    }

    #[test]
    fn an_extrapolated_idle_estimate_is_shown_weak() {
        let text = screen(
            &app_with_idle(true, Some(IdleMethod::Extrapolated)),
            120,
            30,
        );
        assert!(
            text.contains("package s0   30.0 W  attributed   20.0  idle   10.0 (weak)"),
            "{text}"
        );
        let text = screen(&app_with_idle(true, Some(IdleMethod::Percentile)), 120, 30);
        assert!(text.contains("idle   10.0 (online)"), "{text}");
    }

    #[test]
    fn estimated_badge() {
        let mut app = App::new(1.0, true);
        let mut s = snapshot(false);
        if let Some(e) = s.energy.as_mut() {
            e.estimated = true;
            e.source = "model".into();
        }
        app.ingest(Arc::new(s));
        let text = screen(&app, 80, 24);
        assert!(
            text.lines()
                .next()
                .is_some_and(|l| l.contains(" ESTIMATED ")),
            "{text}"
        );
        assert!(
            !text.contains("CYC/s"),
            "no counter columns in time-only mode"
        );
    }

    #[test]
    fn empty_table_and_waiting() {
        let app = App::new(1.0, true);
        assert!(screen(&app, 80, 24).contains("waiting for the first interval"));
        let mut app = App::new(1.0, true);
        let mut s = snapshot(false);
        s.rows.clear();
        app.ingest(Arc::new(s));
        assert!(screen(&app, 80, 24).contains("no task ran in this interval"));
    }

    #[test]
    fn fits_80x24() {
        let app = app_with(true);
        let text = screen(&app, 80, 24);
        assert_eq!(text.lines().count(), 24);
        assert!(
            text.contains("PID") && text.contains("COMMAND") && text.contains("burn"),
            "{text}"
        );
        // Every line fits, the key hints with `h help` first, and the header's essentials.
        let last = text.lines().last().unwrap_or_default();
        assert!(last.starts_with("h help  q quit  / search"), "{text}");
        assert!(
            text.lines()
                .next()
                .is_some_and(|l| l.contains("metric cycles")),
            "{text}"
        );
        assert!(text.contains("unattr.  0.00"), "{text}");
        // The same at 60 columns: hints and header lose their tail, not their start.
        let narrow = screen(&app, 60, 24);
        assert!(
            narrow
                .lines()
                .last()
                .is_some_and(|l| l.starts_with("h help")),
            "{narrow}"
        );
        assert!(
            narrow
                .lines()
                .next()
                .is_some_and(|l| l.starts_with("powerapi top powercap"))
        );
    }

    /// The README's model example: a badge, the source, the metric, 2 CPUs, the interval.
    fn estimated_app(source: &str, metric: &str, meter_cpu_percent: f64) -> App {
        let mut app = App::new(1.0, true);
        let mut s = snapshot(false);
        s.meter_cpu_percent = meter_cpu_percent;
        if let Some(e) = s.energy.as_mut() {
            e.estimated = true;
            e.source = source.into();
            e.domains.push(DomainReport {
                key: DomainKey {
                    domain: Domain::Package,
                    socket: 0,
                },
                measured_j: 12.2,
                attributed_j: 8.2,
                idle_j: 4.0,
                unattributed_j: 0.0,
                power_w: 12.2,
                idle_w: 4.0,
                idle_source: IdleSource::Model,
                idle_method: None,
                metric: metric.into(),
                formula: None,
            });
        }
        app.ingest(Arc::new(s));
        app
    }

    #[test]
    fn meter_cost_stays_at_80_columns() {
        let first_line = |app: &App, columns: u16| {
            let text = screen(app, columns, 24);
            text.lines()
                .next()
                .unwrap_or_default()
                .trim_end()
                .to_string()
        };
        // The README's example: at 80 columns only the word "metric" goes.
        let mut app = estimated_app("model", "cpu-time", 0.7);
        assert_eq!(
            first_line(&app, 80),
            "powerapi top  ESTIMATED  model · cpu-time · 2 CPUs · 1.0s · meter 0.7% CPU"
        );
        assert_eq!(
            first_line(&app, 120),
            "powerapi top  ESTIMATED  model · metric cpu-time · 2 CPUs · 1.0s · meter 0.7% CPU"
        );
        // The longest header there is: both badges, the longest source and metric, a costly
        // meter. The CPU count, the interval and then the metric give way; the meter does not.
        app = estimated_app("smartwatts-model", "instructions", 12.3);
        app.apply(Action::TogglePause);
        assert_eq!(
            first_line(&app, 80),
            "powerapi top  ESTIMATED   PAUSED  smartwatts-model · meter 12.3% CPU"
        );
        // Narrower still, the source outlasts the meter.
        let header = first_line(&app, 50);
        assert!(header.ends_with("smartwatts-model"), "{header}");
    }

    #[test]
    fn fitting_and_units() {
        assert_eq!(fit(&["ab".into(), "cd".into(), "ef".into()], 5), "abcd");
        let parts = [
            HeaderPart::new(3, "source".into()),
            HeaderPart::new(2, "metric cycles".into()).or("cycles".into()),
            HeaderPart::new(1, "2 CPUs".into()),
        ];
        assert_eq!(fit_ranked(&parts, 40), "source · metric cycles · 2 CPUs");
        assert_eq!(fit_ranked(&parts, 26), "source · cycles · 2 CPUs");
        assert_eq!(fit_ranked(&parts, 20), "source · cycles");
        assert_eq!(fit_ranked(&parts, 8), "source");
        assert_eq!(fit_ranked(&parts, 3), "");
        assert_eq!(footer_hints(6, "process"), "h help");
        assert_eq!(shown_watts(-0.001), "0.00");
        assert_eq!(shown_watts(-0.2), "-0.20");
        assert_eq!(
            (memory(812), memory(12_595), memory(2 * 1024 * 1024)),
            ("812K".into(), "12.3M".into(), "2.0G".into())
        );
        assert_eq!(scaled([1.0, 2.5].into_iter()), (vec![100, 250], 2.5));
    }

    #[test]
    fn help_closes_and_charts_show_their_scale() {
        let mut app = app_with(false);
        app.apply(Action::ToggleHelp);
        let text = screen(&app, 100, 30);
        assert!(
            text.contains("k  F9") && text.contains("Esc, q or h closes it"),
            "{text}"
        );
        assert!(text.contains("scale 0–30.0 W"), "{text}");
        app.apply(Action::ToggleHelp);
        assert!(!screen(&app, 100, 30).contains("k  F9"));
        app.apply(Action::End);
        app.apply(Action::AskSignal);
        let text = screen(&app, 100, 30);
        assert!(
            text.contains("send SIGTERM to 300 (nginx)? y yes  n no"),
            "{text}"
        );
    }

    #[test]
    fn filter_active() {
        let mut app = app_with(false);
        app.apply(Action::StartFilter);
        for c in "ngi".chars() {
            app.apply(Action::FilterChar(c));
        }
        let text = screen(&app, 100, 24);
        assert!(text.contains("/ filter: ngi"), "{text}");
        assert!(!text.contains("burn"), "{text}");
        app.apply(Action::FinishFilter);
        let text = screen(&app, 100, 24);
        assert!(text.contains("filter: ngi"), "{text}");
        app.apply(Action::StartFilter);
        app.apply(Action::FilterChar('x'));
        assert!(screen(&app, 100, 24).contains("no row matches the filter"));
    }

    #[test]
    fn help_overlay() {
        let mut app = app_with(false);
        app.apply(Action::ToggleHelp);
        let text = screen(&app, 80, 24);
        assert!(
            text.contains(" help ") && text.contains("invert the sort order"),
            "{text}"
        );
    }

    #[test]
    fn each_group_by() {
        let mut app = app_with(false);
        for (by, header, expect) in [
            (GroupBy::Thread, "TID", "201"),
            (GroupBy::Cgroup, "N", "docker:3f1c8b7a9d2e"),
            (GroupBy::Command, "N", "nginx"),
            (GroupBy::User, "N", "www"),
            (GroupBy::Process, "PID", "300"),
        ] {
            app.apply(Action::CycleGroup);
            assert_eq!(app.group_by, by);
            let text = screen(&app, 100, 24);
            assert!(text.contains(&format!("by {}", by.label())), "{text}");
            assert!(
                text.lines().any(|l| l.trim_start().starts_with(header)),
                "{by:?}: {text}"
            );
            assert!(text.contains(expect), "{by:?}: {text}");
        }
    }
}
