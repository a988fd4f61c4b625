"""`lmforge export`: merge adapters, write safetensors shards, a GGUF file and an Ollama Modelfile.

Every export folder describes itself in `lmforge_export.json` (base model, adapters, template,
formats), so `chat`, `api` and `webchat` serve it without the user repeating `template:`
(`lmforge.model.resolve` reads it).
"""
