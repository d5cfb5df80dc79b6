"""The window's presenters (Qt, no widgets of their own): they take the views'
intents, drive the engine and the store, and hand the views plain data."""
