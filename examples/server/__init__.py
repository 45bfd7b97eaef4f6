"""An OpenAI- and Ollama-compatible REST server on the cortexstream Python module."""
