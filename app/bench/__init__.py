"""`kvchat bench`: measurements of kvchat against llama.cpp. Nothing on the
app's runtime path imports it (an import-linter contract holds it to that)."""
