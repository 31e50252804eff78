//! Keys → actions, with the bindings people know from top and htop.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::state::Action;

/// `editing_filter`: typing goes into the filter; `filter_set`: Esc clears it instead of quitting.
pub fn action_for(key: KeyEvent, editing_filter: bool, filter_set: bool) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    if editing_filter {
        return match key.code {
            KeyCode::Esc => Some(Action::ClearFilter),
            KeyCode::Enter => Some(Action::FinishFilter),
            KeyCode::Backspace => Some(Action::FilterBackspace),
            KeyCode::Char(c) => Some(Action::FilterChar(c)),
            _ => None,
        };
    }
    Some(match key.code {
        KeyCode::Esc if filter_set => Action::ClearFilter,
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home => Action::Home,
        KeyCode::End => Action::End,
        KeyCode::Char('<') => Action::SortPrev,
        KeyCode::Char('>') | KeyCode::F(6) => Action::SortNext,
        KeyCode::Char('I') => Action::InvertSort,
        KeyCode::Char('/') => Action::StartFilter,
        KeyCode::Char('g') => Action::CycleGroup,
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
        assert_eq!(
            action_for(key(KeyCode::Char('q')), false, false),
            Some(Action::Quit)
        );
        assert_eq!(
            action_for(
                KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
                true,
                true
            ),
            Some(Action::Quit)
        );
        assert_eq!(
            action_for(key(KeyCode::Esc), false, false),
            Some(Action::Quit)
        );
        assert_eq!(
            action_for(key(KeyCode::Esc), false, true),
            Some(Action::ClearFilter)
        );
        assert_eq!(
            action_for(key(KeyCode::F(6)), false, false),
            Some(Action::SortNext)
        );
        assert_eq!(
            action_for(key(KeyCode::Char('q')), true, false),
            Some(Action::FilterChar('q'))
        );
        assert_eq!(
            action_for(key(KeyCode::Esc), true, false),
            Some(Action::ClearFilter)
        );
        assert_eq!(
            action_for(key(KeyCode::Char('?')), false, false),
            Some(Action::ToggleHelp)
        );
        assert_eq!(action_for(key(KeyCode::Char('z')), false, false), None);
    }
}
