"""The modules that call llama.cpp (llama-cpp-python). They run in the engine
host process, or in a short-lived child of their own (the dry run, the build
probe), never in the window's process: an import-linter contract lets no
other module import `llama_cpp`."""
