//! The UI's state and what actions do to it. No terminal, no sensor: plain data.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use super::snapshot::TopSnapshot;

/// Chart length in intervals (120 s at the default 1 s).
pub const HISTORY: usize = 120;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupBy {
    Process,
    Thread,
    Cgroup,
    /// All processes with the same name.
    Command,
    User,
}

impl GroupBy {
    pub const ALL: [GroupBy; 5] = [
        GroupBy::Process,
        GroupBy::Thread,
        GroupBy::Cgroup,
        GroupBy::Command,
        GroupBy::User,
    ];

    pub fn next(self) -> Self {
        let i = Self::ALL.iter().position(|g| *g == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }

    pub fn label(self) -> &'static str {
        match self {
            GroupBy::Process => "process",
            GroupBy::Thread => "thread",
            GroupBy::Cgroup => "cgroup/container",
            GroupBy::Command => "command",
            GroupBy::User => "user",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Id,
    User,
    Command,
    Watts,
    Joules,
    Cpu,
    Memory,
    CyclesPerSec,
    Ipc,
    Cgroup,
}

impl Column {
    pub const ALL: [Column; 10] = [
        Column::Id,
        Column::User,
        Column::Command,
        Column::Watts,
        Column::Joules,
        Column::Cpu,
        Column::Memory,
        Column::CyclesPerSec,
        Column::Ipc,
        Column::Cgroup,
    ];

    pub fn header(self, group_by: GroupBy) -> &'static str {
        match self {
            Column::Id => match group_by {
                GroupBy::Process => "PID",
                GroupBy::Thread => "TID",
                _ => "N",
            },
            Column::User => "USER",
            Column::Command => "COMMAND",
            Column::Watts => "W",
            Column::Joules => "J",
            Column::Cpu => "CPU%",
            Column::Memory => "RES",
            Column::CyclesPerSec => "CYC/s",
            Column::Ipc => "IPC",
            Column::Cgroup => "CGROUP/CONTAINER",
        }
    }
}

/// One line of the table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ViewRow {
    /// Stable identity within a group-by (for totals, history and selection).
    pub key: String,
    /// PID, TID, or the number of processes in the group.
    pub id: String,
    pub user: String,
    pub command: String,
    pub cgroup: String,
    pub watts: f64,
    /// Joules since start (or since `r`).
    pub joules_total: f64,
    pub cpu_percent: f64,
    /// Resident memory, KiB (of the processes in the row).
    pub rss_kib: u64,
    pub cycles_per_s: Option<f64>,
    pub ipc: Option<f64>,
    /// The process's pid and parent (process rows), for the tree and for signals.
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    /// The full command line, when known.
    pub cmdline: Option<String>,
}

struct Grouped {
    key: String,
    id: String,
    user: String,
    command: String,
    cgroup: String,
    on_cpu_ns: u64,
    joules: f64,
    cycles: u64,
    instructions: u64,
    members: std::collections::HashSet<u32>,
    rss_kib: u64,
    pid: Option<u32>,
    ppid: Option<u32>,
    cmdline: Option<String>,
}

/// Groups a snapshot's threads by `by`. Keyed rows, unsorted.
fn group(snapshot: &TopSnapshot, by: GroupBy) -> Vec<Grouped> {
    let slot = |name: &str| snapshot.counters.iter().position(|c| c == name);
    let (cycles, instructions) = (slot("cycles"), slot("instructions"));
    let mut groups: HashMap<String, Grouped> = HashMap::new();
    for row in &snapshot.rows {
        let key = match by {
            GroupBy::Process => row.pid.to_string(),
            GroupBy::Thread => format!("{}/{}", row.pid, row.tid),
            GroupBy::Cgroup => row.cgroup.clone(),
            GroupBy::Command => row.process_comm.clone(),
            GroupBy::User => row.user.clone(),
        };
        let g = groups.entry(key.clone()).or_insert_with(|| Grouped {
            id: match by {
                GroupBy::Process => row.pid.to_string(),
                GroupBy::Thread => row.tid.to_string(),
                _ => String::new(),
            },
            user: row.user.clone(),
            command: match by {
                GroupBy::Thread => row.comm.clone(),
                GroupBy::Cgroup => row.cgroup.clone(),
                _ => row.process_comm.clone(),
            },
            cgroup: row.cgroup.clone(),
            key,
            on_cpu_ns: 0,
            joules: 0.0,
            cycles: 0,
            instructions: 0,
            members: Default::default(),
            rss_kib: 0,
            pid: matches!(by, GroupBy::Process | GroupBy::Thread).then_some(row.pid),
            ppid: row.ppid,
            cmdline: row.cmdline.clone(),
        });
        g.on_cpu_ns += row.on_cpu_ns;
        g.joules += row.joules;
        g.cycles += cycles.map_or(0, |s| row.counters[s]);
        g.instructions += instructions.map_or(0, |s| row.counters[s]);
        // Memory is per process: count each process once, however many of its threads ran.
        if g.members.insert(row.pid) {
            g.rss_kib += row.rss_kib;
        }
        if by == GroupBy::Process && row.pid == row.tid {
            g.command = row.comm.clone();
        }
    }
    let mut out: Vec<Grouped> = groups.into_values().collect();
    for g in &mut out {
        if !matches!(by, GroupBy::Process | GroupBy::Thread) {
            g.id = g.members.len().to_string();
        }
        if matches!(by, GroupBy::User) {
            g.command = format!("{} processes", g.members.len());
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    /// Sort by this column, largest first (htop's `P`, `M`).
    SortBy(Column),
    /// Show the processes as a tree (process view).
    ToggleTree,
    /// Ask to send SIGTERM to the selected process.
    AskSignal,
    ConfirmSignal,
    CancelSignal,
    /// Show the selected row's full command line.
    ShowCommand,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    SortPrev,
    SortNext,
    InvertSort,
    StartFilter,
    FilterChar(char),
    FilterBackspace,
    ClearFilter,
    FinishFilter,
    CycleGroup,
    TogglePause,
    ResetTotals,
    ToggleHelp,
}

/// What accumulates across intervals: frozen with the screen while paused.
#[derive(Clone, Debug, Default)]
pub struct Accumulated {
    totals: HashMap<GroupBy, HashMap<String, f64>>,
    pub machine_joules: f64,
    pub total_history: VecDeque<f64>,
    row_history: HashMap<String, VecDeque<f64>>,
}

pub struct App {
    pub group_by: GroupBy,
    pub tree: bool,
    /// The process a confirmed signal goes to, for the run loop to send (App stays pure).
    pub signal_request: Option<u32>,
    /// Awaiting y/n: the pid and what it is, for the prompt.
    pub pending_signal: Option<(u32, String)>,
    /// One line for the footer (a command line, the result of a signal).
    pub status: Option<String>,
    pub sort: Column,
    pub descending: bool,
    pub filter: String,
    pub editing_filter: bool,
    pub paused: bool,
    pub help: bool,
    pub selected: usize,
    /// Table rows that fit on screen; set by the run loop from the terminal size.
    pub page_rows: usize,
    pub no_color: bool,
    pub interval_s: f64,
    /// What is on screen (frozen while paused).
    pub shown: Option<Arc<TopSnapshot>>,
    live: Accumulated,
    /// A copy of `live` taken at pause: what the screen shows until resumed.
    frozen: Option<Accumulated>,
}

impl App {
    pub fn new(interval_s: f64, no_color: bool) -> Self {
        Self {
            group_by: GroupBy::Process,
            tree: false,
            signal_request: None,
            pending_signal: None,
            status: None,
            sort: Column::Watts,
            descending: true,
            filter: String::new(),
            editing_filter: false,
            paused: false,
            help: false,
            selected: 0,
            page_rows: 10,
            no_color,
            interval_s,
            shown: None,
            live: Accumulated::default(),
            frozen: None,
        }
    }

    /// The accumulated figures on screen: the live ones, or those frozen at pause.
    pub fn view(&self) -> &Accumulated {
        self.frozen.as_ref().unwrap_or(&self.live)
    }

    pub fn has_counter(&self, name: &str) -> bool {
        self.shown
            .as_ref()
            .is_some_and(|s| s.counters.iter().any(|c| c == name))
    }

    /// Columns on screen: counter columns only when those counters are read.
    pub fn columns(&self) -> Vec<Column> {
        let (cycles, ipc) = (
            self.has_counter("cycles"),
            self.has_counter("cycles") && self.has_counter("instructions"),
        );
        Column::ALL
            .into_iter()
            .filter(|c| match c {
                Column::CyclesPerSec => cycles,
                Column::Ipc => ipc,
                _ => true,
            })
            .collect()
    }

    /// Takes a new interval: totals and charts always advance; the screen only when not paused.
    pub fn ingest(&mut self, snapshot: Arc<TopSnapshot>) {
        let selected_key = self.selected_key();
        let acc = &mut self.live;
        for by in GroupBy::ALL {
            let totals = acc.totals.entry(by).or_default();
            for g in group(&snapshot, by) {
                *totals.entry(g.key).or_default() += g.joules;
            }
        }
        let seconds = snapshot.duration_s.max(1e-9);
        if let Some(energy) = &snapshot.energy {
            acc.machine_joules += energy.total_w * snapshot.duration_s;
            push(&mut acc.total_history, energy.total_w);
        }
        for g in group(&snapshot, self.group_by) {
            push(
                acc.row_history.entry(g.key).or_default(),
                g.joules / seconds,
            );
        }
        if acc.row_history.len() > 4 * snapshot.rows.len().max(256) {
            let live: std::collections::HashSet<String> = group(&snapshot, self.group_by)
                .into_iter()
                .map(|g| g.key)
                .collect();
            acc.row_history.retain(|k, _| live.contains(k));
        }
        if !self.paused {
            self.shown = Some(snapshot);
            self.reselect(selected_key);
        }
    }

    fn reselect(&mut self, key: Option<String>) {
        let rows = self.rows();
        if let Some(i) = key.and_then(|k| rows.iter().position(|r| r.key == k)) {
            self.selected = i;
        }
        self.selected = self.selected.min(rows.len().saturating_sub(1));
    }

    /// Grouped, filtered and sorted rows of what is on screen.
    pub fn rows(&self) -> Vec<ViewRow> {
        let Some(snapshot) = &self.shown else {
            return Vec::new();
        };
        let seconds = snapshot.duration_s.max(1e-9);
        let totals = self.view().totals.get(&self.group_by);
        let filter = self.filter.to_lowercase();
        let has_cycles = self.has_counter("cycles");
        let has_ipc = has_cycles && self.has_counter("instructions");
        let mut rows: Vec<ViewRow> = group(snapshot, self.group_by)
            .into_iter()
            .map(|g| ViewRow {
                joules_total: totals.and_then(|t| t.get(&g.key)).copied().unwrap_or(0.0),
                watts: g.joules / seconds,
                cpu_percent: g.on_cpu_ns as f64 / 1e9 / seconds * 100.0,
                rss_kib: g.rss_kib,
                pid: g.pid,
                ppid: g.ppid,
                cmdline: g.cmdline,
                cycles_per_s: has_cycles.then(|| g.cycles as f64 / seconds),
                ipc: (has_ipc && g.cycles > 0).then(|| g.instructions as f64 / g.cycles as f64),
                key: g.key,
                id: g.id,
                user: g.user,
                command: g.command,
                cgroup: g.cgroup,
            })
            .filter(|r| {
                filter.is_empty()
                    || [&r.command, &r.id, &r.user, &r.cgroup]
                        .iter()
                        .any(|f| f.to_lowercase().contains(&filter))
            })
            .collect();
        let sort = self.sort;
        rows.sort_by(|a, b| {
            let ord = match sort {
                Column::Id => {
                    a.id.parse::<u64>()
                        .unwrap_or(0)
                        .cmp(&b.id.parse::<u64>().unwrap_or(0))
                }
                Column::User => a.user.cmp(&b.user),
                Column::Command => a.command.cmp(&b.command),
                Column::Cgroup => a.cgroup.cmp(&b.cgroup),
                Column::Watts => a
                    .watts
                    .total_cmp(&b.watts)
                    .then(a.cpu_percent.total_cmp(&b.cpu_percent)),
                Column::Joules => a.joules_total.total_cmp(&b.joules_total),
                Column::Cpu => a.cpu_percent.total_cmp(&b.cpu_percent),
                Column::Memory => a.rss_kib.cmp(&b.rss_kib),
                Column::CyclesPerSec => a
                    .cycles_per_s
                    .unwrap_or(0.0)
                    .total_cmp(&b.cycles_per_s.unwrap_or(0.0)),
                Column::Ipc => a.ipc.unwrap_or(0.0).total_cmp(&b.ipc.unwrap_or(0.0)),
            };
            let ord = if self.descending { ord.reverse() } else { ord };
            ord.then_with(|| a.key.cmp(&b.key))
        });
        if self.tree && self.group_by == GroupBy::Process {
            rows = as_tree(rows);
        }
        rows
    }

    pub fn selected_key(&self) -> Option<String> {
        self.rows().get(self.selected).map(|r| r.key.clone())
    }

    /// Power history (watts per interval) of the row `key`, when charted.
    pub fn history(&self, key: &str) -> Option<&VecDeque<f64>> {
        self.view().row_history.get(key)
    }

    /// Applies an action; returns false when the app should quit.
    pub fn apply(&mut self, action: Action) -> bool {
        let count = self.rows().len();
        let last = count.saturating_sub(1);
        let page = self.page_rows.max(1);
        if !matches!(action, Action::ShowCommand) {
            self.status = None;
        }
        match action {
            Action::Quit => return false,
            Action::SortBy(column) => {
                self.sort = column;
                self.descending = true;
            }
            Action::ToggleTree => {
                if self.group_by != GroupBy::Process {
                    self.group_by = GroupBy::Process;
                    self.live.row_history.clear();
                }
                self.tree = !self.tree;
            }
            Action::AskSignal => {
                let rows = self.rows();
                match rows.get(self.selected).and_then(|r| r.pid.map(|p| (p, r))) {
                    Some((pid, row)) => {
                        let name = row.command.trim_start_matches([' ', '└']).to_string();
                        self.pending_signal = Some((pid, name))
                    }
                    None => {
                        self.status =
                            Some("select a process or thread row to send it a signal".into())
                    }
                }
            }
            Action::ConfirmSignal => {
                self.signal_request = self.pending_signal.take().map(|(pid, _)| pid);
            }
            Action::CancelSignal => self.pending_signal = None,
            Action::ShowCommand => {
                let rows = self.rows();
                self.status = rows.get(self.selected).map(|r| {
                    r.cmdline.clone().unwrap_or_else(|| {
                        format!("{} (command line unknown: it has ended)", r.command.trim())
                    })
                });
            }
            Action::Up => self.selected = self.selected.saturating_sub(1),
            Action::Down => self.selected = (self.selected + 1).min(last),
            Action::PageUp => self.selected = self.selected.saturating_sub(page),
            Action::PageDown => self.selected = (self.selected + page).min(last),
            Action::Home => self.selected = 0,
            Action::End => self.selected = last,
            Action::SortPrev | Action::SortNext => {
                let columns = self.columns();
                let i = columns.iter().position(|c| *c == self.sort).unwrap_or(0);
                let n = columns.len();
                self.sort = columns[if action == Action::SortNext {
                    (i + 1) % n
                } else {
                    (i + n - 1) % n
                }];
                // Numbers read best largest first, names alphabetically.
                self.descending = !matches!(
                    self.sort,
                    Column::Id | Column::User | Column::Command | Column::Cgroup
                );
            }
            Action::InvertSort => self.descending = !self.descending,
            Action::StartFilter => self.editing_filter = true,
            Action::FilterChar(c) => {
                self.filter.push(c);
                self.selected = 0;
            }
            Action::FilterBackspace => {
                self.filter.pop();
            }
            Action::ClearFilter => {
                self.filter.clear();
                self.editing_filter = false;
            }
            Action::FinishFilter => self.editing_filter = false,
            Action::CycleGroup => {
                self.group_by = self.group_by.next();
                self.live.row_history.clear();
                self.selected = 0;
            }
            Action::TogglePause => {
                self.paused = !self.paused;
                self.frozen = self.paused.then(|| self.live.clone());
            }
            Action::ResetTotals => {
                self.live.totals.clear();
                self.live.machine_joules = 0.0;
                if let Some(frozen) = self.frozen.as_mut() {
                    frozen.totals.clear();
                    frozen.machine_joules = 0.0;
                }
            }
            Action::ToggleHelp => self.help = !self.help,
        }
        self.selected = self.selected.min(self.rows().len().saturating_sub(1));
        true
    }
}

/// Orders process rows as a tree: each under its parent (when the parent is in the table), in
/// the current sort order among siblings, the command indented by depth.
fn as_tree(rows: Vec<ViewRow>) -> Vec<ViewRow> {
    let present: std::collections::HashSet<u32> = rows.iter().filter_map(|r| r.pid).collect();
    let mut children: HashMap<u32, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match row
            .ppid
            .filter(|p| present.contains(p) && Some(*p) != row.pid)
        {
            Some(parent) => children.entry(parent).or_default().push(i),
            None => roots.push(i),
        }
    }
    let mut order = Vec::with_capacity(rows.len());
    let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|i| (i, 0)).collect();
    let mut placed = vec![false; rows.len()];
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut placed[i], true) {
            continue; // a cycle in bad /proc data: each row once
        }
        order.push((i, depth));
        if let Some(kids) = rows[i].pid.and_then(|p| children.get(&p)) {
            stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
        }
    }
    // Rows only reachable through a cycle.
    order.extend((0..rows.len()).filter(|&i| !placed[i]).map(|i| (i, 0)));
    let mut rows: Vec<Option<ViewRow>> = rows.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|(i, depth)| {
            let mut row = rows[i].take()?;
            if depth > 0 {
                row.command = format!("{}└ {}", "  ".repeat(depth - 1), row.command);
            }
            Some(row)
        })
        .collect()
}

fn push(history: &mut VecDeque<f64>, value: f64) {
    history.push_back(value);
    if history.len() > HISTORY {
        history.pop_front();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tui::snapshot::{EnergyHeader, TaskRow};

    pub(crate) fn row(
        pid: u32,
        tid: u32,
        comm: &str,
        user: &str,
        cgroup: &str,
        cpu_ms: u64,
        joules: f64,
    ) -> TaskRow {
        TaskRow {
            pid,
            tid,
            comm: comm.into(),
            process_comm: comm.into(),
            user: user.into(),
            cgroup: cgroup.into(),
            on_cpu_ns: cpu_ms * 1_000_000,
            counters: [cpu_ms * 3_000_000, cpu_ms * 6_000_000, 0, 0],
            joules,
            rss_kib: u64::from(pid) * 10,
            // nginx 300 is a child of nginx 200; the others of init.
            ppid: Some(if pid == 300 { 200 } else { 1 }),
            cmdline: Some(format!("/usr/bin/{comm} --pid {pid}")),
        }
    }

    pub(crate) fn snapshot(counters: bool) -> TopSnapshot {
        TopSnapshot {
            seq: 1,
            duration_s: 1.0,
            cpus: 2,
            busy_ns: 1_200_000_000,
            counters: if counters {
                vec!["cycles".into(), "instructions".into()]
            } else {
                vec![]
            },
            energy: Some(EnergyHeader {
                source: "powercap".into(),
                estimated: false,
                domains: vec![],
                total_w: 30.0,
                idle_w: 10.0,
            }),
            meter_cpu_percent: 0.4,
            losses: Default::default(),
            rows: vec![
                row(100, 100, "burn", "root", "docker:3f1c8b7a9d2e", 900, 15.0),
                row(200, 200, "nginx", "www", "nginx.service", 200, 3.0),
                row(200, 201, "nginx", "www", "nginx.service", 100, 1.5),
                row(300, 300, "nginx", "www", "nginx.service", 10, 0.5),
            ],
        }
    }

    #[test]
    fn sorted_by_power_and_grouped() {
        let mut app = App::new(1.0, true);
        app.ingest(Arc::new(snapshot(true)));
        let rows = app.rows();
        assert_eq!(
            rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            vec!["100", "200", "300"]
        );
        assert_eq!(rows[1].watts, 4.5);
        assert_eq!(rows[0].ipc, Some(2.0));
        app.apply(Action::CycleGroup);
        assert_eq!(app.group_by, GroupBy::Thread);
        assert_eq!(app.rows().len(), 4);
        app.apply(Action::CycleGroup);
        let cgroups = app.rows();
        assert_eq!(
            (cgroups[0].command.as_str(), cgroups[1].id.as_str()),
            ("docker:3f1c8b7a9d2e", "2")
        );
        app.apply(Action::CycleGroup);
        let commands = app.rows();
        assert_eq!(
            (
                commands[1].command.as_str(),
                commands[1].id.as_str(),
                commands[1].watts
            ),
            ("nginx", "2", 5.0)
        );
        app.apply(Action::CycleGroup);
        assert_eq!(app.rows()[1].user, "www");
        app.apply(Action::CycleGroup);
        assert_eq!(app.group_by, GroupBy::Process);
    }

    #[test]
    fn totals_accumulate_and_reset() {
        let mut app = App::new(1.0, true);
        app.ingest(Arc::new(snapshot(false)));
        app.ingest(Arc::new(snapshot(false)));
        assert_eq!(app.rows()[0].joules_total, 30.0);
        assert_eq!(app.view().machine_joules, 60.0);
        app.apply(Action::ResetTotals);
        assert_eq!(app.rows()[0].joules_total, 0.0);
        assert_eq!(app.view().total_history.len(), 2);
    }

    #[test]
    fn sort_filter_pause_and_moves() {
        let mut app = App::new(1.0, true);
        app.ingest(Arc::new(snapshot(false)));
        assert_eq!(
            app.columns().len(),
            8,
            "no counter columns without counters"
        );
        app.apply(Action::SortNext); // Watts → Joules
        assert_eq!(app.sort, Column::Joules);
        app.apply(Action::SortPrev);
        app.apply(Action::SortPrev); // → Command
        assert_eq!((app.sort, app.descending), (Column::Command, false));
        assert_eq!(app.rows()[0].command, "burn");
        app.apply(Action::InvertSort);
        assert_eq!(app.rows()[0].command, "nginx");
        app.apply(Action::StartFilter);
        for c in "BUR".chars() {
            app.apply(Action::FilterChar(c));
        }
        assert_eq!(app.rows().len(), 1, "case-insensitive filter");
        app.apply(Action::ClearFilter);
        assert_eq!(app.rows().len(), 3);
        app.apply(Action::End);
        assert_eq!(app.selected, 2);
        app.apply(Action::Down);
        assert_eq!(app.selected, 2);
        app.apply(Action::Home);
        app.apply(Action::TogglePause);
        let mut busier = snapshot(false);
        busier.rows[0].joules = 99.0;
        app.ingest(Arc::new(busier));
        let burn = |app: &App| {
            app.rows()
                .into_iter()
                .find(|r| r.command == "burn")
                .expect("burn row")
        };
        assert_eq!(burn(&app).watts, 15.0, "paused screen is frozen");
        assert_eq!(
            burn(&app).joules_total,
            15.0,
            "joules on screen are frozen too"
        );
        assert_eq!(app.view().machine_joules, 30.0);
        app.apply(Action::TogglePause);
        app.ingest(Arc::new(snapshot(false)));
        assert_eq!(
            burn(&app).joules_total,
            15.0 + 99.0 + 15.0,
            "totals kept counting while paused"
        );
        assert!(!app.apply(Action::Quit));
    }

    #[test]
    fn figures_over_half_a_second_histories_and_the_selection_follows_its_row() {
        let mut half = snapshot(true);
        half.duration_s = 0.5;
        let mut app = App::new(0.5, true);
        app.ingest(Arc::new(half.clone()));
        let rows = app.rows();
        // burn: 15 J in 0.5 s = 30 W; 900 ms of CPU in 0.5 s = 180 %; 2.7e9 cycles / 0.5 s.
        assert_eq!(rows[0].watts, 30.0);
        assert_eq!(rows[0].cpu_percent, 180.0);
        assert_eq!(rows[0].cycles_per_s, Some(5.4e9));
        assert_eq!(rows[0].ipc, Some(2.0));
        assert_eq!(app.view().machine_joules, 15.0, "30 W × 0.5 s");
        assert_eq!(
            app.history("100").map(|h| h.back().copied()),
            Some(Some(30.0))
        );
        // The selection stays on its row when the order changes.
        app.apply(Action::Down); // nginx (200)
        let mut swapped = half.clone();
        swapped.rows[0].joules = 0.1; // burn drops below nginx
        app.ingest(Arc::new(swapped));
        assert_eq!(app.selected_key().as_deref(), Some("200"));
        assert_eq!(app.rows()[0].id, "200");
        // Thread grouping keeps threads apart, and each thread's own name.
        app.apply(Action::CycleGroup);
        assert_eq!(app.rows().len(), 4);
        assert_eq!(GroupBy::Thread.label(), "thread");
        // Without instructions there is no IPC column (cycles alone give cycles/s).
        let mut cycles_only = snapshot(true);
        cycles_only.counters = vec!["cycles".into()];
        let mut app = App::new(1.0, true);
        app.ingest(Arc::new(cycles_only));
        assert!(app.columns().contains(&Column::CyclesPerSec));
        assert!(!app.columns().contains(&Column::Ipc));
        assert_eq!(app.rows()[0].ipc, None);
    }

    #[test]
    fn row_histories_of_rows_gone_are_dropped_past_four_times_the_rows() {
        // 300 rows an interval, each interval new ones: the histories are a memory bound's
        // worth (4 × 300 = 1,200) before the ones no longer live are dropped.
        let mut app = App::new(1.0, true);
        let interval = |n: u32| {
            let mut s = snapshot(false);
            s.rows = (0..300)
                .map(|i| row(n * 1000 + i + 1, n * 1000 + i + 1, "w", "u", "/", 1, 0.1))
                .collect();
            Arc::new(s)
        };
        for n in 0..4 {
            app.ingest(interval(n));
        }
        assert_eq!(
            app.view().row_history.len(),
            1_200,
            "not yet beyond the bound"
        );
        app.ingest(interval(4));
        assert_eq!(
            app.view().row_history.len(),
            300,
            "only the live rows are kept"
        );
        assert!(app.history("4001").is_some() && app.history("1").is_none());
    }

    #[test]
    fn commands_by_grouping_and_no_ipc_without_cycles() {
        let mut s = snapshot(true);
        // A worker thread renamed itself; its process is still named by its main thread.
        s.rows[2].comm = "worker".into();
        // A process whose threads executed instructions but no cycle was counted.
        s.rows[3].counters = [0, 5_000, 0, 0];
        let mut app = App::new(1.0, true);
        app.ingest(Arc::new(s));
        let by_id = |app: &App, id: &str| app.rows().into_iter().find(|r| r.id == id);
        assert_eq!(by_id(&app, "200").map(|r| r.command), Some("nginx".into()));
        assert_eq!(by_id(&app, "300").and_then(|r| r.ipc), None);
        app.apply(Action::CycleGroup);
        assert_eq!(app.group_by, GroupBy::Thread);
        assert_eq!(by_id(&app, "201").map(|r| r.command), Some("worker".into()));
        while app.group_by != GroupBy::Cgroup {
            app.apply(Action::CycleGroup);
        }
        let commands: Vec<String> = app.rows().into_iter().map(|r| r.command).collect();
        assert!(
            commands
                .iter()
                .all(|c| c.contains(':') || c.ends_with(".service")),
            "a cgroup row is named by its cgroup: {commands:?}"
        );
    }

    #[test]
    fn paging_and_the_tree_from_another_grouping() {
        let mut s = snapshot(false);
        s.rows = (1..=10)
            .map(|pid| row(pid, pid, "w", "u", "/", 100 - u64::from(pid), 1.0))
            .collect();
        let mut app = App::new(1.0, true);
        app.page_rows = 4;
        app.ingest(Arc::new(s));
        app.apply(Action::SortBy(Column::Cpu));
        app.apply(Action::PageDown);
        assert_eq!(app.selected_key().as_deref(), Some("5"), "four rows down");
        app.apply(Action::PageDown);
        app.apply(Action::PageDown);
        assert_eq!(
            app.selected_key().as_deref(),
            Some("10"),
            "stops at the last"
        );
        app.apply(Action::PageUp);
        assert_eq!(app.selected_key().as_deref(), Some("6"));
        // The tree is of processes: asked for while grouping threads, it regroups.
        app.apply(Action::CycleGroup);
        assert_eq!(app.group_by, GroupBy::Thread);
        app.apply(Action::ToggleTree);
        assert_eq!((app.group_by, app.tree), (GroupBy::Process, true));
    }

    #[test]
    fn a_parent_cycle_in_proc_data_still_shows_every_row_once() {
        let mut s = snapshot(false);
        let mut a = row(10, 10, "a", "u", "/", 5, 1.0);
        let mut b = row(11, 11, "b", "u", "/", 5, 1.0);
        (a.ppid, b.ppid) = (Some(11), Some(10));
        s.rows.extend([a, b]);
        let mut app = App::new(1.0, true);
        app.ingest(Arc::new(s));
        app.apply(Action::ToggleTree);
        let mut ids: Vec<String> = app.rows().into_iter().map(|r| r.id).collect();
        ids.sort();
        assert_eq!(ids, ["10", "100", "11", "200", "300"]);
    }

    #[test]
    fn the_chart_window_holds_the_last_120_intervals() {
        let mut app = App::new(1.0, true);
        for _ in 0..HISTORY + 5 {
            app.ingest(Arc::new(snapshot(false)));
        }
        assert_eq!(app.view().total_history.len(), HISTORY);
        assert_eq!(app.history("100").map(VecDeque::len), Some(HISTORY));
    }

    #[test]
    fn htop_keys_memory_tree_signal_and_command_line() {
        let mut app = App::new(1.0, true);
        app.ingest(Arc::new(snapshot(false)));
        app.apply(Action::SortBy(Column::Memory));
        let ids: Vec<String> = app.rows().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["300", "200", "100"], "RES, largest first");
        assert_eq!(
            app.rows()[1].rss_kib,
            2000,
            "a process counted once, not per thread"
        );
        app.apply(Action::SortBy(Column::Watts));
        app.apply(Action::ToggleTree);
        let tree: Vec<(String, String)> =
            app.rows().into_iter().map(|r| (r.id, r.command)).collect();
        assert_eq!(
            tree,
            [
                ("100".to_string(), "burn".to_string()),
                ("200".to_string(), "nginx".to_string()),
                ("300".to_string(), "└ nginx".to_string()),
            ]
        );
        // Signal: asked, then confirmed; the run loop sends it.
        app.apply(Action::End);
        app.apply(Action::AskSignal);
        assert_eq!(app.pending_signal, Some((300, "nginx".to_string())));
        app.apply(Action::CancelSignal);
        assert_eq!(
            (app.pending_signal.clone(), app.signal_request),
            (None, None)
        );
        app.apply(Action::AskSignal);
        app.apply(Action::ConfirmSignal);
        assert_eq!(app.signal_request, Some(300));
        app.apply(Action::ShowCommand);
        assert_eq!(app.status.as_deref(), Some("/usr/bin/nginx --pid 300"));
        app.apply(Action::Up);
        assert_eq!(app.status, None, "the next key clears the status line");
        // Cgroup rows are no process: nothing to signal.
        app.apply(Action::CycleGroup);
        app.apply(Action::CycleGroup);
        app.apply(Action::AskSignal);
        assert_eq!(app.pending_signal, None);
        assert!(app.status.is_some());
    }
}
