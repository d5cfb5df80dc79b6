"""The names of llama.cpp's built-in chat templates, for the settings dialog.

Kept here, free of llama.cpp, so the window's process can list them without
loading the library; a test checks the list against the llama.cpp kvchat is
built with (llama_chat_builtin_templates).
"""

from __future__ import annotations

# What a LoadConfig's chat_template starts with to name one of them.
BUILTIN_PREFIX = "llama.cpp:"

BUILTIN_TEMPLATE_NAMES: tuple[str, ...] = (
    "bailing", "bailing-think", "bailing2", "chatglm3", "chatglm4", "chatml", "command-r",
    "deepseek", "deepseek-ocr", "deepseek2", "deepseek3", "exaone-moe", "exaone3", "exaone4",
    "falcon3", "gemma", "gigachat", "glmedge", "gpt-oss", "granite", "granite-4.0",
    "granite-4.1", "grok-2", "hunyuan-dense", "hunyuan-moe", "hunyuan-vl", "kimi-k2", "llama2",
    "llama2-sys", "llama2-sys-bos", "llama2-sys-strip", "llama3", "llama4", "megrez", "minicpm",
    "mistral-v1", "mistral-v3", "mistral-v3-tekken", "mistral-v7", "mistral-v7-tekken",
    "monarch", "openchat", "orion", "pangu-embedded", "phi3", "phi4", "rwkv-world", "seed_oss",
    "smolvlm", "solar-open", "vicuna", "vicuna-orca", "yandex", "zephyr",
)  # fmt: skip
