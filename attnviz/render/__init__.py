"""Views: functions that take typed results and return matplotlib Figures (no pyplot, no I/O)."""
