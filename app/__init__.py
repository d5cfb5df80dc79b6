"""kvchat's application layer: settings, the engine client and the controller."""
