"""Review and correction: object table, editing, undo, sessions, autosave, label stores."""
