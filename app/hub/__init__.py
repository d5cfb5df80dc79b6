"""Models from Hugging Face: search, file lists, fits answers before a download, downloads.

Qt-free, so the window (through app.models_flow) and the command line
(`kvchat models`) share it. Everything goes through `huggingface_hub`, which
honours HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE, and downloads land in the
Hugging Face cache that other tools read too.
"""
