"""An OpenAI- and Ollama-compatible REST server on the cortexstream Python module.

Installed with `pip install cortexstream[server]` (FastAPI and uvicorn); run it with the
`cortexstream-server` console script or `python -m cortexstream.server`.
"""

import sys

if sys.version_info < (3, 11):
    # The package itself supports 3.9; the server uses 3.11 features (datetime.UTC and more).
    raise ImportError(f"cortexstream.server needs Python 3.11 or newer, this is {sys.version.split()[0]}")
