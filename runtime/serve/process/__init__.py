"""The serve process itself: its log format, its file-descriptor budget and its systemd notifications (used by
every layer of serve, so they import nothing of it)."""
