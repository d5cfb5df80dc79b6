"""kvchat's command line: one parser (`main`) and a module for each subcommand."""
