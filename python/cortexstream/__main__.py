"""``python -m cortexstream pull [smollm2|minilm|gemma3|all]``: fill the model cache (``list`` shows it)."""

import sys

from cortexstream.models import main

sys.exit(main())
