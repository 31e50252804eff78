//! Keys → actions, with the bindings people know from top and htop.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::state::{Action, Column};

/// What the keyboard is talking to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The table; `filter_set`: Esc clears the filter instead of quitting.
    Table { filter_set: bool },
    /// Typing goes into the filter.
    Filter,
    /// The help overlay: the keys that open it, Esc and q close it (not `top`).
    Help,
    /// A y/n question (send a signal?).
    Confirm,
}

impl Mode {
    pub fn of(app: &super::state::App) -> Self {
        if app.pending_signal.is_some() {
            Mode::Confirm
        } else if app.help {
            Mode::Help
        } else if app.editing_filter {
            Mode::Filter
        } else {
            Mode::Table {
                filter_set: !app.filter.is_empty(),
            }
        }
    }
}

pub fn action_for(key: KeyEvent, mode: Mode) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    let filter_set = match mode {
        Mode::Filter => {
            return match key.code {
                KeyCode::Esc => Some(Action::ClearFilter),
                KeyCode::Enter => Some(Action::FinishFilter),
                KeyCode::Backspace => Some(Action::FilterBackspace),
                KeyCode::Char(c) => Some(Action::FilterChar(c)),
                _ => None,
            };
        }
        Mode::Help => {
            return match key.code {
                KeyCode::Esc | KeyCode::Char('q' | 'h' | '?') | KeyCode::F(1) | KeyCode::Enter => {
                    Some(Action::ToggleHelp)
                }
                KeyCode::F(10) => Some(Action::Quit),
                _ => None,
            };
        }
        Mode::Confirm => {
            return match key.code {
                KeyCode::Char('y' | 'Y') => Some(Action::ConfirmSignal),
                KeyCode::Char('n' | 'N' | 'q') | KeyCode::Esc => Some(Action::CancelSignal),
                _ => None,
            };
        }
        Mode::Table { filter_set } => filter_set,
    };
    Some(match key.code {
        KeyCode::Esc if filter_set => Action::ClearFilter,
        KeyCode::Char('q') | KeyCode::Esc | KeyCode::F(10) => Action::Quit,
        KeyCode::Up => Action::Up,
        KeyCode::Down => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home => Action::Home,
        KeyCode::End => Action::End,
        KeyCode::Char('<') => Action::SortPrev,
        KeyCode::Char('>') | KeyCode::F(6) => Action::SortNext,
        KeyCode::Char('P') => Action::SortBy(Column::Cpu),
        KeyCode::Char('M') => Action::SortBy(Column::Memory),
        KeyCode::Char('I') => Action::InvertSort,
        KeyCode::Char('/') | KeyCode::F(3) | KeyCode::F(4) => Action::StartFilter,
        KeyCode::Char('g') => Action::CycleGroup,
        KeyCode::Char('t') | KeyCode::F(5) => Action::ToggleTree,
        KeyCode::Char('k') | KeyCode::F(9) => Action::AskSignal,
        KeyCode::Char('c') => Action::ShowCommand,
        KeyCode::Char('p') => Action::TogglePause,
        KeyCode::Char('r') => Action::ResetTotals,
        KeyCode::Char('h') | KeyCode::Char('?') | KeyCode::F(1) => Action::ToggleHelp,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn bindings() {
        let table = Mode::Table { filter_set: false };
        let filtered = Mode::Table { filter_set: true };
        for (code, mode, action) in [
            (KeyCode::Char('q'), table, Some(Action::Quit)),
            (KeyCode::F(10), table, Some(Action::Quit)),
            (KeyCode::Esc, table, Some(Action::Quit)),
            (KeyCode::Esc, filtered, Some(Action::ClearFilter)),
            (KeyCode::F(6), table, Some(Action::SortNext)),
            (KeyCode::Char('P'), table, Some(Action::SortBy(Column::Cpu))),
            (
                KeyCode::Char('M'),
                table,
                Some(Action::SortBy(Column::Memory)),
            ),
            (KeyCode::F(3), table, Some(Action::StartFilter)),
            (KeyCode::F(4), table, Some(Action::StartFilter)),
            (KeyCode::F(5), table, Some(Action::ToggleTree)),
            (KeyCode::Char('k'), table, Some(Action::AskSignal)),
            (KeyCode::F(9), table, Some(Action::AskSignal)),
            (KeyCode::Char('c'), table, Some(Action::ShowCommand)),
            (KeyCode::Char('?'), table, Some(Action::ToggleHelp)),
            (KeyCode::Char('z'), table, None),
            (
                KeyCode::Char('q'),
                Mode::Filter,
                Some(Action::FilterChar('q')),
            ),
            (KeyCode::Esc, Mode::Filter, Some(Action::ClearFilter)),
            // In the help, Esc and q close the help, not top.
            (KeyCode::Esc, Mode::Help, Some(Action::ToggleHelp)),
            (KeyCode::Char('q'), Mode::Help, Some(Action::ToggleHelp)),
            (KeyCode::Char('k'), Mode::Help, None),
            (
                KeyCode::Char('y'),
                Mode::Confirm,
                Some(Action::ConfirmSignal),
            ),
            (KeyCode::Esc, Mode::Confirm, Some(Action::CancelSignal)),
            (KeyCode::Char('k'), Mode::Confirm, None),
        ] {
            assert_eq!(action_for(key(code), mode), action, "{code:?} in {mode:?}");
        }
        assert_eq!(
            action_for(
                KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
                Mode::Filter
            ),
            Some(Action::Quit)
        );
    }
}
