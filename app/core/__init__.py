"""kvchat's Qt-free core: settings, the conversation store, export, paths."""
